"""Generated Open Inference Protocol stubs; regenerate with scripts/gen-inference-protos.sh, never edit by hand."""
