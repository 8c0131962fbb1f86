"""Evaluation runs on the server's own object graph: the corpus collection, the retriever over judged
queries, the chat pipeline over a question set, follow-up retrieval. The scoring, datasets, judges and
reports they use live in `evals/`, which works on plain data and never imports `app`."""
