"""Fine-tuning the local embedder on a user's own judged queries (`ragserver tune embedder`).

sentence-transformers' trainer with MultipleNegativesRankingLoss: every (query, relevant text) pair is
trained against the other pairs' texts in its batch (in-batch negatives) and against hard negatives,
texts BM25 ranks high for the query that are not judged relevant. A share of the training queries is
held out: the trainer scores them (dense nDCG@10 over their BM25 candidates and relevant texts) as it
goes, keeps the best checkpoint and stops when they stop improving, or when the time budget is spent.

Only the queries that appear in the given qrels are read, so a queries file holding every split's
texts (BEIR's) leaks nothing of the splits kept out. The model directory written loads like the
packaged model (`RAGSERVER_EMBEDDING_MODEL_PATH`, the ONNX export included) and carries a card
(README.md, and `ragserver-tuning.json` for programs) naming the base model, data, loss, steps and
the held-out figures before and after.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD_FILE = "ragserver-tuning.json"
_DEV_NAME = "heldout"
_METRIC = f"eval_{_DEV_NAME}_cosine_ndcg@10"


class TuningError(ValueError):
    """Input that cannot be trained on (no judged query found, malformed pairs file, ...)."""


@dataclass
class TuneConfig:
    base_model: str | None = None  # a sentence-transformers directory; None: the packaged MiniLM
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    hard_negatives: int = 1  # per pair, mined with BM25 (0: in-batch negatives only)
    negative_depth: int = 10  # hard negatives are drawn from the top N non-relevant BM25 hits
    holdout: float = 0.1  # share of the training queries held out to stop early
    max_seq_length: int = 128  # training length of texts (the saved model keeps the base's)
    budget_s: float = 18 * 60  # training stops (keeping the best checkpoint) after this long
    patience: int = 2  # held-out evaluations without improvement before stopping
    evals_per_epoch: int = 2
    seed: int = 42


@dataclass
class TrainingData:
    """Pairs to train on, the held-out queries to stop on, and where they came from."""

    train: list[tuple[str, str]] = field(default_factory=list)  # (query, relevant text)
    train_query_ids: list[str] = field(default_factory=list)
    dev_queries: dict[str, str] = field(default_factory=dict)
    dev_relevant: dict[str, set[str]] = field(default_factory=dict)
    corpus: dict[str, str] = field(default_factory=dict)  # doc id -> the text the embedder sees
    sources: list[dict[str, Any]] = field(default_factory=list)


# -- data ----------------------------------------------------------------------------------------


def document_text(title: str, text: str) -> str:
    """A corpus row as the embedder sees its first chunk (`ingest.chunking.embedding_text`)."""
    return f"{title}\n{text}" if title and title not in text[:200] else text


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; TuningError naming the line for anything else."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuningError(f"{path}:{lineno}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise TuningError(f"{path}:{lineno}: a row must be a JSON object")
            yield lineno, row


def load_corpus(path: Path) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for lineno, row in _rows(path):
        if "_id" not in row or "text" not in row:
            raise TuningError(f"{path}:{lineno}: a corpus row needs '_id' and 'text'")
        corpus[str(row["_id"])] = document_text(str(row.get("title") or ""), str(row["text"]))
    return corpus


def load_pairs(path: Path) -> list[tuple[str, str]]:
    """(query, relevant text) rows: `{"query", "positive"}` (also `question` and `text`/`document`)."""
    pairs: list[tuple[str, str]] = []
    for lineno, row in _rows(path):
        query = row.get("query") or row.get("question")
        positive = row.get("positive") or row.get("text") or row.get("document")
        if not isinstance(query, str) or not isinstance(positive, str) or not query or not positive:
            raise TuningError(f"{path}:{lineno}: a pair needs a 'query' and a 'positive' text")
        pairs.append((query, positive))
    return pairs


def split_queries(query_ids: list[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out) query ids: a seeded shuffle, `holdout` of them (at least one when 0 < holdout
    and there are two or more) held out."""
    ids = sorted(query_ids)
    random.Random(seed).shuffle(ids)
    n_dev = round(len(ids) * holdout)
    if holdout > 0 and n_dev == 0 and len(ids) >= 2:
        n_dev = 1
    return sorted(ids[n_dev:]), sorted(ids[:n_dev])


def build_training_data(
    *,
    corpus: Path | None,
    queries: Path | None,
    qrels: Path | None,
    pairs: Path | None,
    holdout: float,
    seed: int,
    title_pairs: int = 0,
) -> TrainingData:
    """Pairs from judged queries (only those in `qrels`, positive grades) and/or a pairs file, plus
    `title_pairs` (title, document) pairs drawn from the corpus itself (domain adaptation without
    labels; never a document relevant to a held-out query, so the early-stopping signal stays fair)."""
    from evals.retrieval_eval import file_sha256, load_qrels, load_queries

    data = TrainingData()
    if qrels is not None:
        if corpus is None or queries is None:
            raise TuningError("--qrels needs --corpus and --queries")
        data.corpus = load_corpus(corpus)
        texts = load_queries(queries)
        judged = load_qrels(qrels)
        relevant = {
            qid: {d for d, g in docs.items() if g > 0 and d in data.corpus}
            for qid, docs in judged.items()
            if qid in texts
        }
        relevant = {q: docs for q, docs in relevant.items() if docs}
        if not relevant:
            raise TuningError("no query of the qrels file has a text in --queries and a relevant document")
        train_ids, dev_ids = split_queries(list(relevant), holdout, seed)
        data.train_query_ids = train_ids
        data.train = [(texts[q], data.corpus[d]) for q in train_ids for d in sorted(relevant[q])]
        data.dev_queries = {q: texts[q] for q in dev_ids}
        data.dev_relevant = {q: relevant[q] for q in dev_ids}
        data.sources += [
            {"corpus": str(corpus), "sha256": file_sha256(corpus), "documents": len(data.corpus)},
            {"queries": str(queries), "sha256": file_sha256(queries), "read": len(relevant)},
            {
                "qrels": str(qrels),
                "sha256": file_sha256(qrels),
                "train_queries": len(train_ids),
                "heldout_queries": len(dev_ids),
                "train_pairs": len(data.train),
            },
        ]
    if pairs is not None:
        extra = load_pairs(pairs)
        if not extra:
            raise TuningError(f"{pairs}: no pairs")
        data.train += extra
        data.sources.append({"pairs": str(pairs), "sha256": file_sha256(pairs), "train_pairs": len(extra)})
        if not data.corpus:  # negatives are mined among the pairs' own texts
            data.corpus = {f"pair-{i}": text for i, (_, text) in enumerate(dict.fromkeys(extra))}
    if title_pairs:
        if corpus is None:
            raise TuningError("--title-pairs needs --corpus")
        if not data.corpus:
            data.corpus = load_corpus(corpus)
        held = {d for docs in data.dev_relevant.values() for d in docs}
        titled = [
            (str(row["title"]), str(row["_id"]))
            for _, row in _rows(corpus)
            if row.get("title") and str(row.get("_id")) not in held and str(row.get("_id")) in data.corpus
        ]
        picked = random.Random(seed).sample(titled, min(title_pairs, len(titled)))
        data.train += [(title, data.corpus[doc]) for title, doc in picked]
        data.sources.append({"corpus_title_pairs": len(picked)})
    if not data.train:
        raise TuningError("nothing to train on: give --qrels (with --corpus and --queries) or --pairs")
    return data


class BM25Miner:
    """BM25 over the corpus with the server's analyzer, for hard negatives and held-out candidates."""

    def __init__(self, corpus: dict[str, str]):
        import bm25s

        from ingest.bm25_text import Analyzer

        self.analyzer = Analyzer()
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.model = bm25s.BM25(method="lucene")
        self.model.index([self.analyzer.terms(t) for t in self.texts], show_progress=False)

    def top(self, query: str, k: int) -> list[str]:
        terms = self.analyzer.terms(query)
        if not terms:
            return []
        k = min(k, len(self.ids))
        docs, _ = self.model.retrieve([terms], k=k, show_progress=False, n_threads=1)
        return [self.ids[int(i)] for i in docs[0]]


def add_hard_negatives(
    pairs: list[tuple[str, str]], miner: BM25Miner, corpus: dict[str, str], n: int, depth: int, seed: int
) -> list[list[str]]:
    """Rows of [query, positive, negative_1..n]: BM25's top `depth` texts for the query that are not
    relevant to it (not one of its pairs' texts), drawn at random; a row short of negatives is dropped
    rather than padded (the trainer needs one width)."""
    positives: dict[str, set[str]] = {}
    for query, text in pairs:
        positives.setdefault(query, set()).add(text)
    rng = random.Random(seed)
    rows = []
    for query, text in pairs:
        if n == 0:
            rows.append([query, text])
            continue
        pool = [corpus[d] for d in miner.top(query, depth + len(positives[query]))]
        pool = [t for t in pool if t not in positives[query]][:depth]
        if len(pool) < n:
            continue
        rows.append([query, text, *rng.sample(pool, n)])
    return rows


# -- training ------------------------------------------------------------------------------------


def heldout_evaluator(data: TrainingData, miner: BM25Miner, candidates: int = 20) -> Any:
    """Dense nDCG@10 of the held-out queries over their BM25 candidates plus their relevant texts
    (the full corpus is too slow to re-encode at every evaluation on a CPU)."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    pool: set[str] = set()
    for qid, text in data.dev_queries.items():
        pool.update(miner.top(text, candidates))
        pool.update(data.dev_relevant[qid])
    return InformationRetrievalEvaluator(
        queries=data.dev_queries,
        corpus={d: data.corpus[d] for d in sorted(pool)},
        relevant_docs=data.dev_relevant,
        name=_DEV_NAME,
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        write_csv=False,
        batch_size=64,
    )


def _dev_figures(scores: dict[str, float]) -> dict[str, float]:
    prefix = f"{_DEV_NAME}_cosine_"
    keep = {"ndcg@10", "mrr@10", "recall@10", "accuracy@1"}
    out = {}
    for key, value in scores.items():
        name = key.split(prefix, 1)[-1] if prefix in key else None
        if name in keep:
            out[name] = round(float(value), 4)
    return out


def tune_embedder(
    data: TrainingData,
    out: Path,
    config: TuneConfig,
    *,
    log_line: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune, save the best model to `out` with its card; returns the card."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_DISABLED", "true")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback, TrainerCallback

    from ingest.embedder import packaged_model_dir

    started = time.monotonic()
    base = Path(config.base_model) if config.base_model else packaged_model_dir()
    if not base.is_dir():
        raise TuningError(f"base model {base} is not a directory")
    model = SentenceTransformer(str(base), device="cpu")
    saved_length = model.max_seq_length
    model.max_seq_length = min(config.max_seq_length, saved_length or config.max_seq_length)

    miner = BM25Miner(data.corpus)
    rows = add_hard_negatives(
        data.train, miner, data.corpus, config.hard_negatives, config.negative_depth, config.seed
    )
    if not rows:
        raise TuningError("no training pair kept (too few BM25 negatives; try --hard-negatives 0)")
    columns = ["anchor", "positive", *[f"negative_{i + 1}" for i in range(config.hard_negatives)]]
    dataset = Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)}).shuffle(
        seed=config.seed
    )
    log_line(
        f"{len(rows)} training rows ({len(data.train) - len(rows)} without enough negatives dropped), "
        f"{len(data.dev_queries)} held-out queries, base {base}"
    )

    evaluator = heldout_evaluator(data, miner) if data.dev_queries else None
    before = _dev_figures(evaluator(model)) if evaluator is not None else {}
    if before:
        log_line(f"held-out before: {json.dumps(before)}")

    batch = max(2, min(config.batch_size, len(rows)))
    steps_per_epoch = max(1, len(rows) // batch)
    eval_steps = max(1, steps_per_epoch // max(1, config.evals_per_epoch))
    budget_end = started + config.budget_s

    class TimeBudget(TrainerCallback):  # type: ignore[misc]
        """Stops at the next step once the budget is spent (the best checkpoint is still loaded)."""

        stopped = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if time.monotonic() >= budget_end:
                TimeBudget.stopped = True
                control.should_training_stop = True
                control.should_evaluate = evaluator is not None
                control.should_save = evaluator is not None
            return control

    with tempfile.TemporaryDirectory(prefix="ragserver-tune-") as work:
        args = SentenceTransformerTrainingArguments(
            output_dir=work,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=64,
            learning_rate=config.learning_rate,
            warmup_steps=max(1, round(steps_per_epoch * config.epochs * config.warmup_ratio)),
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            eval_strategy="steps" if evaluator is not None else "no",
            eval_steps=eval_steps,
            save_strategy="steps" if evaluator is not None else "no",
            save_steps=eval_steps,
            save_total_limit=2,
            load_best_model_at_end=evaluator is not None,
            metric_for_best_model=_METRIC if evaluator is not None else None,
            greater_is_better=True,
            logging_steps=max(1, eval_steps // 2),
            report_to="none",
            seed=config.seed,
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        callbacks: list[Any] = [TimeBudget()]
        if evaluator is not None:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model),
            evaluator=evaluator,
            callbacks=callbacks,
        )
        result = trainer.train()
        state = trainer.state
        history = [
            {"step": h["step"], "epoch": round(h.get("epoch", 0.0), 3), "ndcg@10": round(h[_METRIC], 4)}
            for h in state.log_history
            if _METRIC in h
        ]
        best_step = state.best_global_step if evaluator is not None else state.global_step

    after = _dev_figures(evaluator(model)) if evaluator is not None else {}
    if before and after and after.get("ndcg@10", 0.0) < before.get("ndcg@10", 0.0):
        log_line("warning: the held-out queries score lower than before tuning; the base model is better")
    model.max_seq_length = saved_length
    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))
    card = {
        "base_model": str(base),
        "data": data.sources,
        "loss": "MultipleNegativesRankingLoss (in-batch negatives"
        + (f" + {config.hard_negatives} BM25 hard negative(s) per pair)" if config.hard_negatives else ")"),
        "config": asdict(config),
        "training_rows": len(rows),
        "steps": state.global_step,
        "best_step": best_step,
        "epochs_run": round(state.epoch or 0.0, 3),
        "stopped_by": "time budget" if TimeBudget.stopped else ("early stopping or epochs"),
        "train_loss": round(float(result.training_loss), 4),
        "heldout": {"queries": len(data.dev_queries), "before": before, "after": after, "history": history},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(card), encoding="utf-8")
    return card


def model_card(card: dict[str, Any]) -> str:
    """The card as Markdown (README.md of the model directory)."""
    held = card["heldout"]
    lines = [
        "# Tuned embedder (ragserver tune embedder)",
        "",
        f"- Base model: `{card['base_model']}`",
        f"- Loss: {card['loss']}",
        f"- Training rows: {card['training_rows']}; steps {card['steps']} (best checkpoint: step "
        f"{card['best_step']}), epochs run {card['epochs_run']}, stopped by {card['stopped_by']}; "
        f"final train loss {card['train_loss']}; {card['seconds']} s",
        f"- Settings: `{json.dumps(card['config'])}`",
        "",
        "## Data",
        "",
        *[f"- `{json.dumps(source)}`" for source in card["data"]],
        "",
        f"## Held-out queries ({held['queries']}; dense, over their BM25 top 20 and relevant texts)",
        "",
        "| | nDCG@10 | MRR@10 | recall@10 | accuracy@1 |",
        "|---|---|---|---|---|",
    ]
    for label in ("before", "after"):
        f = held[label]
        if f:
            lines.append(
                f"| {label} | {f.get('ndcg@10', '')} | {f.get('mrr@10', '')} | "
                f"{f.get('recall@10', '')} | {f.get('accuracy@1', '')} |"
            )
    if held["history"]:
        lines += [
            "",
            "Evaluations: " + ", ".join(f"step {h['step']}: {h['ndcg@10']}" for h in held["history"]),
        ]
    lines += [
        "",
        "Serve it: `RAGSERVER_EMBEDDING_MODEL_PATH=<this directory>` (a collection embedded with another",
        "model must be rebuilt: `ragserver collections rebuild C --embedding-model <this directory>`, with",
        "this directory under the server's `<data_dir>/models` or another of `collections.model_roots`).",
        "",
    ]
    return "\n".join(lines)


def split_qrels(
    qrels: Path, dev_fraction: float, seed: int, train_out: Path, dev_out: Path
) -> tuple[int, int]:
    """Write `qrels` as two files by query (a seeded split): the part to tune on and a dev part to
    measure on. Returns the query counts (train, dev)."""
    from evals.retrieval_eval import load_qrels

    judged = load_qrels(qrels)
    train_ids, dev_ids = split_queries(list(judged), dev_fraction, seed)
    for path, ids in ((train_out, train_ids), (dev_out, dev_ids)):
        with Path(path).open("w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid in ids:
                for doc, grade in judged[qid].items():
                    fh.write(f"{qid}\t{doc}\t{grade}\n")
    return len(train_ids), len(dev_ids)
