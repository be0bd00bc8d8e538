#!/usr/bin/env node
'use strict';
require('../dist/cjs/cli.js').main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    console.error(err && err.message ? `llmcore: ${err.message}` : err);
    process.exitCode = 1;
  },
);
