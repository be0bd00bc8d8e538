// npm run demo: the classic HF example (gpt2, "The cat is on the table", max_length=50,
// num_return_sequences=5) on a random-weight 124M checkpoint created on first run.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { main } = require('../dist/cjs/cli.js');

(async () => {
  const dir = process.env.LLMCORE_DEMO_MODEL || path.join(__dirname, '..', '.cache', 'gpt2-random-124M');
  if (!fs.existsSync(path.join(dir, 'model.safetensors'))) {
    console.log(`Creating a random-weight GPT-2 124M checkpoint in ${dir} (once)...`);
    const code = await main(['create-random', '--preset', '124M', '--out', dir, '--seed', '0']);
    if (code !== 0) process.exit(code);
  }
  console.log(
    '\nNote: this checkpoint has RANDOM weights, so the text below is noise; the shapes, tokenizer and\n' +
      'speed are those of real GPT-2. For real text, download the real model and point --model at it:\n' +
      '  huggingface-cli download openai-community/gpt2 --local-dir gpt2\n' +
      '  npx llmcore generate "The cat is on the table" --model gpt2 --max-length 50 --num-return-sequences 5\n' +
      '(downloaded without --local-dir, it is in the Hugging Face cache, and --model gpt2 finds it there)\n',
  );
  process.exitCode = await main([
    'generate', 'The cat is on the table', '--model', dir, '--max-length', '50', '--num-return-sequences', '5',
  ]);
})().catch((err) => {
  console.error(`demo failed: ${err.message}`);
  process.exitCode = 1;
});
