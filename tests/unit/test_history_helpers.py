"""Pure helpers of the history and job records: token-budget trimming, final job status, records."""

from __future__ import annotations

import pytest

from app.history.base import Turn, approx_token_count, trim_to_token_budget
from app.jobs.base import Job, JobFile, final_status

pytestmark = pytest.mark.unit


def turns(*contents: str) -> list[Turn]:
    return [
        Turn(role="user" if i % 2 == 0 else "assistant", content=c, created_at=float(i))
        for i, c in enumerate(contents)
    ]


def words(n: int) -> str:
    return " ".join(["w"] * n)


class TestTrimToTokenBudget:
    def test_approximation_is_words_times_1_3(self) -> None:
        assert approx_token_count("one two  three\nfour") == pytest.approx(5.2)
        assert approx_token_count("") == 0

    def test_everything_fits(self) -> None:
        history = turns("a b", "c d")
        assert trim_to_token_budget(history, 100) == history

    def test_keeps_most_recent_whole_turns_in_order(self) -> None:
        history = turns(words(10), words(10), words(10))  # 13 tokens each
        assert trim_to_token_budget(history, 26) == history[1:]
        assert trim_to_token_budget(history, 25.9) == history[2:]

    def test_newest_alone_too_big_keeps_none(self) -> None:
        history = turns("short", words(100))
        assert trim_to_token_budget(history, 50) == []

    def test_stops_at_first_overflow_no_holes(self) -> None:
        # The middle turn does not fit; the short oldest one would, but keeping it would leave a gap.
        history = turns("old", words(100), "new")
        assert trim_to_token_budget(history, 10) == history[2:]

    def test_zero_budget_and_empty_history(self) -> None:
        assert trim_to_token_budget(turns("a"), 0) == []
        assert trim_to_token_budget([], 100) == []

    def test_pluggable_counter(self) -> None:
        history = turns("abcd", "ab", "abc")
        assert trim_to_token_budget(history, 5, count_tokens=len) == history[1:]

    def test_does_not_mutate_input(self) -> None:
        history = turns("a", "b", "c")
        before = list(history)
        trim_to_token_budget(history, 1.3)
        assert history == before


class TestTurn:
    def test_role_is_checked(self) -> None:
        with pytest.raises(ValueError):
            Turn(role="system", content="x", created_at=0.0)

    def test_json_round_trip(self) -> None:
        turn = Turn("assistant", "ünïcødé 🚀", 1.5, {"citations": [{"id": "c1"}]})
        assert Turn.from_json(turn.to_json()) == turn
        assert "ü" in turn.to_json()  # stored readable, not \u-escaped


def files(*statuses: str) -> list[JobFile]:
    return [JobFile(f"d{i}", f"f{i}.txt", f"/u/f{i}.txt", status=s) for i, s in enumerate(statuses)]


class TestFinalStatus:
    @pytest.mark.parametrize(
        ("statuses", "expected"),
        [
            (("succeeded",), "succeeded"),
            (("succeeded", "skipped"), "succeeded"),
            (("skipped", "skipped"), "succeeded"),
            (("failed", "failed"), "failed"),
            (("succeeded", "failed"), "partial"),
            (("skipped", "failed"), "partial"),
            ((), "succeeded"),
        ],
    )
    def test_final_status(self, statuses: tuple[str, ...], expected: str) -> None:
        assert final_status(files(*statuses)) == expected

    @pytest.mark.parametrize("pending", ["queued", "running"])
    def test_refuses_while_a_file_is_pending(self, pending: str) -> None:
        with pytest.raises(ValueError, match="still"):
            final_status(files("succeeded", pending))


class TestJobRecord:
    def make(self, *statuses: str) -> Job:
        return Job("j1", "default", "running", files(*statuses), {"k": "v"}, 1.0, 2.0)

    def test_progress_counts_final_files(self) -> None:
        assert self.make("succeeded", "skipped", "failed", "running", "queued").progress == {
            "done": 3,
            "total": 5,
        }

    def test_to_dict_round_trip(self) -> None:
        job = self.make("succeeded", "queued")
        data = job.to_dict()
        assert data["progress"] == {"done": 1, "total": 2}
        assert data["files"][0] == {
            "document_id": "d0",
            "filename": "f0.txt",
            "stored_path": "/u/f0.txt",
            "status": "succeeded",
            "error": None,
            "chunks": 0,
            "original_filename": None,
        }
        assert Job.from_dict(data) == job

    def test_statuses_are_checked(self) -> None:
        with pytest.raises(ValueError):
            Job("j1", "default", "done", [], {}, 0.0, 0.0)
        with pytest.raises(ValueError):
            JobFile("d", "f", "/p", status="ok")

    def test_document_ids_must_be_unique(self) -> None:
        duplicate = [JobFile("d", "a.txt", "/a"), JobFile("d", "b.txt", "/b")]
        with pytest.raises(ValueError, match="unique"):
            Job("j1", "default", "queued", duplicate, {}, 0.0, 0.0)

    def test_file_lookup(self) -> None:
        job = self.make("queued")
        assert job.file("d0").filename == "f0.txt"
        with pytest.raises(KeyError):
            job.file("missing")
