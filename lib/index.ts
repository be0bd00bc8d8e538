// llmcore: GPT-2 family language models from Node, on our own C++ engine.
export { loadModel, Model } from './model';
export type { Device, KvCacheDtype, LoadOptions, ModelInfo, Prompt, WeightDtype } from './model';
export type { KvStats } from './admission';
export type { GenerateOptions } from './options';
export type {
  FinishReason, GeneratedSequence, GenerationResult, GenerationStats, StreamChunk,
} from './generation';
export type { ModelConfig, GenerationDefaults } from './config';
export { Gpt2Tokenizer } from './tokenizer';
export type { StreamDecoder } from './tokenizer';
export { createRandomCheckpoint } from './checkpoint';
export {
  LlmcoreError, ModelFormatError, OptionError, DisposedError, BackendError, AbortError,
} from './errors';
export type { ErrorCode } from './errors';
export { backendInfo, runBackendOps, measureRoofline } from './diagnostics';
export type { Roofline } from './native';
