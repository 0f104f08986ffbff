"""Worker-side runtime: model loading, execution and the model store."""
