"""Generated Open Inference Protocol stubs; regenerate with scripts/gen-protos.sh, never edit by hand."""
