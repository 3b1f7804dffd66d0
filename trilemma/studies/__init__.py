"""Studies: whole measurements built on the pipeline, the scorers and training: the trade-off
study, the generation protocol, editing and reranking, and their reports (Markdown, JSON, PNG, HTML)."""
