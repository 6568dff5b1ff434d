"""Sweeps of hub ids other than Pythia choose checkpoints from the hub's branch list.

The real ``huggingface_hub`` client asks a fake hub: an ``http.server`` thread that answers
``GET /api/models/{repo}/refs`` as the hub does, and every other request with 503 (so a
load finds the hub unreachable and takes a fully cached revision from the local cache).
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_run import assert_one_line, run_cli
from net import refused_endpoint, waiting_connections

from scalelens.errors import ScalelensError, ScalelensWarning
from scalelens.models import hub, hub_refs
from scalelens.models.suite import read_manifest
from scalelens.models.testing import write_hub_cache
from scalelens.sweeps.spec import SweepSpec, expand, hub_listing_notes

OLMO = "olmo-test/m"
BRANCHES = ["main", "step0-tokens0B", "step1000-tokens4B", "step2000-tokens8B", "step3000-tokens12B",
            "stage2-ingredient1-step1000-tokens4B"]
OLMO2 = "olmo2-test/m"
OLMO2_BRANCHES = ["main", "step1000-tokens4B", "stage1-step1000-tokens4B", "stage1-step2000-tokens8B"]


class FakeHub:
    """A hub answering ``/api/models/{repo}/refs`` with ``branches[repo]`` (503 for a repo in
    ``down``); anything else 503."""

    def __init__(self, branches: dict[str, list[str]]) -> None:
        self.branches = branches
        self.down: set[str] = set()
        self.asked: list[str] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hub_.asked.append(self.path)
                repo = self.path.removeprefix("/api/models/").removesuffix("/refs")
                if not self.path.endswith("/refs") or repo in hub_.down:
                    self._send(503, {"error": "unavailable"})
                elif repo in hub_.branches:
                    self._send(200, {"branches": [_ref(n) for n in hub_.branches[repo]],
                                     "converts": [], "tags": []})
                else:
                    self._send(404, {"error": "Repository not found"})

            do_HEAD = do_GET  # noqa: N815

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refs_asked(self) -> int:
        return sum(p.endswith("/refs") for p in self.asked)


def _ref(name: str) -> dict[str, str]:
    return {"name": name, "ref": f"refs/heads/{name}", "targetCommit": f"{abs(hash(name)):040x}"[:40]}


def _point_at(monkeypatch, endpoint: str) -> None:
    """The hub client (and any process started now) asks ``endpoint``."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path) -> Iterator[FakeHub]:
    """A fake hub listing OLMo-style branches for ``OLMO``; an empty hub cache; nothing remembered."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("SCALELENS_CACHE", str(tmp_path / "scalelens"))
    monkeypatch.setattr(hub_refs, "_listed", {})
    monkeypatch.setattr(hub, "_unreachable", {})
    fake = FakeHub({OLMO: BRANCHES, "plain/model": ["main"], OLMO2: OLMO2_BRANCHES})
    _point_at(monkeypatch, fake.url)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()



def _keys(checkpoints) -> list[str]:
    return [t.key for t in expand(SweepSpec(models={"m": OLMO}, checkpoints=checkpoints))]


def test_log_all_final_and_steps_of_a_hub_id_choose_from_its_branches(fake_hub, tmp_path):
    """final, all and explicit steps of an OLMo-style hub id come from its branch list (they
    measured main alone, and explicit steps loaded step<N>, which OLMo lacks); a cached
    revision the hub does not list joins them; a step neither has is refused naming those
    there are; planning asks the hub once however often it plans, and never for Pythia."""
    write_hub_cache(tmp_path / "hub", OLMO, {"step500-tokens2B": _any_model(tmp_path)})
    steps = [0, 500, 1000, 2000, 3000]
    assert _keys("final") == ["m/step3000-tokens12B"]
    assert _keys("all") == [f"m/{n}" for n in ("step0-tokens0B", "step500-tokens2B", "step1000-tokens4B",
                                               "step2000-tokens8B", "step3000-tokens12B")]
    assert [t.step for t in expand(SweepSpec(models={"m": OLMO}, checkpoints="log"))] == steps
    assert _keys((1000,)) == ["m/step1000-tokens4B"]
    with pytest.raises(ScalelensError, match=r"^size m \(olmo-test/m\): checkpoint step\(s\) \[5000\] not "
                                             r"available; available: 0, 500, 1000, 2000, 3000$"):
        expand(SweepSpec(models={"m": OLMO}, checkpoints=(1000, 5000)))
    pythia = SweepSpec(models={"p": "EleutherAI/pythia-70m"}, checkpoints="final")
    assert [t.key for t in expand(pythia)] == ["p/step143000"]  # Pythia's steps are known: no question
    assert fake_hub.refs_asked() == 1
    assert hub_listing_notes(SweepSpec(models={"m": OLMO}, checkpoints="all")) == []


def test_two_hub_branches_of_one_chosen_step_are_one_line(fake_hub):
    """Two branches giving one step (OLMo 2's step1000-tokens4B beside stage1-step1000-tokens4B)
    are refused when that step is chosen, naming both (the sweep loaded step1000, which
    neither is); the fix is no cache deletion, as the hub holds them. Other steps still sweep."""
    with pytest.raises(ScalelensError, match=re.escape(
            f"size m ({OLMO2}): step 1000 is given by 2 revisions on the hub (stage1-step1000-tokens4B, "
            "step1000-tokens4B); sweep other steps")):
        expand(SweepSpec(models={"m": OLMO2}, checkpoints=(1000, 2000)))
    assert [t.key for t in expand(SweepSpec(models={"m": OLMO2}, checkpoints="final"))] == [
        "m/stage1-step2000-tokens8B"]


def _any_model(tmp_path: Path) -> Path:
    """A folder to cache as a revision (planning reads only the cache's refs)."""
    folder = tmp_path / "any"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_step_checkpoints_of_a_hub_id_without_step_branches_are_one_line(fake_hub, tmp_path, capsys):
    """A hub id whose branches give no step (only main): explicit steps are one line, exit 2,
    nothing written (the sweep loaded step1000 and failed on the hub's unknown revision);
    log measures main."""
    rc, _, err = run_cli(capsys, ["sweep", "--model", "p=plain/model", "--checkpoints", "1000",
                                  "--analyses", "superposition", "--out", str(tmp_path / "run")])
    assert_one_line(rc, err, "size p (plain/model): the hub lists no revision that gives a training "
                    "step", "it has main)", "leave checkpoints out to measure main")
    assert not (tmp_path / "run").exists()
    assert [t.key for t in expand(SweepSpec(models={"p": "plain/model"}))] == ["p/main"]


def test_offline_or_unreachable_hub_chooses_from_the_local_cache(fake_hub, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE asks nothing; a refused hub is asked and found unreachable: both choose
    from the cached revisions, with one note saying why, and explicit steps not cached still
    load step<N> (their tasks fail on what the cache lacks, as before)."""
    write_hub_cache(tmp_path / "hub", OLMO, {"step1000-tokens4B": _any_model(tmp_path)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _keys("final") == ["m/step1000-tokens4B"]
    assert _keys((1000, 2000)) == ["m/step1000-tokens4B", "m/step2000"]
    assert fake_hub.refs_asked() == 0
    assert hub_listing_notes(SweepSpec(models={"m": OLMO}, checkpoints="log")) == [
        "size m (olmo-test/m): the hub could not list its revisions (HF_HUB_OFFLINE is set); checkpoints "
        "chosen from the 1 step(s) known here (local hub cache, the hub's last listing)"]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _point_at(monkeypatch, refused_endpoint())
    assert _keys("all") == ["m/step1000-tokens4B"]
    [text] = hub_listing_notes(SweepSpec(models={"m": OLMO}, checkpoints="log"))
    assert "the hub could not list its revisions (ConnectError" in text


def test_a_failed_listing_is_asked_for_once_per_process(fake_hub, tmp_path, capsys):
    """A hub failing to list a repo (503) was asked 4 times by one sweep command (its check of
    the spec, the sweep's plan, its notes, the closing cache note), each of which may wait up
    to HF_HUB_ETAG_TIMEOUT; now once, the note still saying why; another repo is still asked."""
    fake_hub.down.add(OLMO)
    rc, _, err = run_cli(capsys, ["sweep", "--model", f"m={OLMO}", "--checkpoints", "all",
                                  "--analyses", "superposition", "--out", str(tmp_path / "run")])
    assert rc != 0 and "Traceback" not in err
    assert "note: size m (olmo-test/m): the hub could not list its revisions (HTTP 503)" in err, err
    assert fake_hub.refs_asked() == 1
    assert hub_listing_notes(SweepSpec(models={"m": OLMO}, checkpoints="all")) != []
    assert _keys("final") == ["m/main"]
    assert fake_hub.refs_asked() == 1
    assert [t.key for t in expand(SweepSpec(models={"m": OLMO2}, checkpoints="final"))] == [
        "m/stage1-step2000-tokens8B"]
    assert fake_hub.refs_asked() == 2


def test_a_rerun_with_the_hub_unreachable_plans_the_tasks_it_finished(fake_hub, micro_suite, tmp_path):
    """A sweep planned from the hub's branches, rerun once the hub is unreachable and a measured
    revision has been deleted from the local hub cache (disk freed), plans the same tasks: all
    skipped, metrics.csv keeps every row (choosing from the cache alone dropped the deleted
    revision's task, and its rows). Each run is a new process: nothing is kept in memory."""
    manifest = read_manifest(micro_suite)
    size = manifest.sizes[0]
    names = {f"step{s}-tokens{s}B": manifest.checkpoint_dir(size, s) for s in manifest.steps[:3]}
    fake_hub.branches[OLMO] = ["main", *names]
    repo = write_hub_cache(tmp_path / "hub", OLMO, names)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_ENDPOINT=fake_hub.url,
               SCALELENS_CACHE=str(tmp_path / "scalelens"))
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "scalelens.cli", "sweep", "--model", f"{size}={OLMO}",
            "--checkpoints", "all", "--analyses", "superposition", "--out", str(run)]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and "sweep: 3 done, 0 skipped, 0 failed" in first.stdout, first.stderr
    rows = _metric_rows(run)
    assert {r["revision"] for r in rows} == set(names)

    (repo / "refs" / next(iter(names))).unlink()
    env["HF_ENDPOINT"] = refused_endpoint()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "sweep: 0 done, 3 skipped, 0 failed" in again.stdout, again.stderr
    assert "the hub could not list its revisions (ConnectError" in again.stderr
    assert _metric_rows(run) == rows


def _metric_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_hanging_hub_is_waited_for_once_then_the_cache_chooses(fake_hub, tmp_path, monkeypatch):
    """A hub that accepts connections and never answers: the listing waits HF_HUB_ETAG_TIMEOUT
    once (the hub client alone waits without end), then the cached revisions choose; the
    timeout is remembered, so planning again, and the loads after it, ask nothing."""
    from huggingface_hub import constants

    write_hub_cache(tmp_path / "hub", OLMO, {"step1000-tokens4B": _any_model(tmp_path)})
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with socket.socket() as silent:  # listens, never accepts: every request waits
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.setblocking(False)
        _point_at(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert _keys("all") == ["m/step1000-tokens4B"]
        first = waiting_connections(silent)
        assert _keys("final") == ["m/step1000-tokens4B"]
        assert (first, waiting_connections(silent)) == (1, 0)
        assert re.fullmatch(r"no answer in 1 s; found \d+ s ago, not asked again for \d+ s",
                            hub.hub_unreachable(OLMO, "step1000-tokens4B") or "")
        assert waiting_connections(silent) == 0



def test_a_failed_loads_revision_check_asks_the_hub_as_planning_does(fake_hub, tmp_path, monkeypatch):
    """explain_failure's listing of the hub's revisions (is the one asked for unknown?) waits at
    most HF_HUB_ETAG_TIMEOUT on a hanging hub (it waited without end), and names an unknown
    revision from the fake hub's branches when the hub answers."""
    from huggingface_hub import constants

    err = hub.explain_failure(OLMO, "step1000", None, OSError("404"))
    assert "step1000" in str(err) and "step1000-tokens4B" in str(err), err
    assert hub.remote_revisions(OLMO) == [b for b in BRANCHES if b.startswith("step")] + [
        "stage2-ingredient1-step1000-tokens4B", "main"]
    monkeypatch.setattr(hub_refs, "_listed", {})
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    answer: list[object] = []
    with socket.socket() as silent:  # listens, never accepts: every request waits
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        _point_at(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        asking = threading.Thread(target=lambda: answer.append(hub.remote_revisions(OLMO)), daemon=True)
        asking.start()
        asking.join(60)
        assert answer == [None]


def test_branches_with_decimal_token_counts_are_checkpoints(fake_hub):
    """OLMo-2-0425-1B-early-training names its branches stage1-step1000-tokens2.1B: `all` took
    only the steps whose token count is whole (0 and 10000), and step 1000 was refused."""
    early = "olmo2-early/m"
    fake_hub.branches[early] = ["main", "stage1-step0-tokens0B", "stage1-step1000-tokens2.1B",
                                "stage1-step2000-tokens4.2B", "stage1-step10000-tokens21B"]
    keys = [t.key for t in expand(SweepSpec(models={"m": early}, checkpoints="all"))]
    assert keys == ["m/stage1-step0-tokens0B", "m/stage1-step1000-tokens2.1B",
                    "m/stage1-step2000-tokens4.2B", "m/stage1-step10000-tokens21B"]
    assert [t.revision for t in expand(SweepSpec(models={"m": early}, checkpoints=(1000,)))] == [
        "stage1-step1000-tokens2.1B"]


BLOOM_LIKE = "bloom-test/m-intermediate"


def test_load_model_checkpoint_loads_the_repos_own_name_for_the_step(fake_hub, micro_suite, tmp_path,
                                                                     monkeypatch):
    """load_model(hub id, checkpoint=N) loaded step<N>, a branch OLMo (step1000-tokens4B) and
    BLOOM's intermediate checkpoints (global_step1000) do not have: now the revision naming step
    N, from the local hub cache (the hub not asked), else the hub's listing, else, offline, the
    listing remembered here. Two revisions of one step are one line naming both."""
    from scalelens.models import load_model

    manifest, cache = read_manifest(micro_suite), tmp_path / "hub"
    size, (first, second) = manifest.sizes[0], manifest.steps[-2:]
    write_hub_cache(cache, OLMO, {"step1000-tokens4B": manifest.checkpoint_dir(size, first)})
    with pytest.warns(ScalelensWarning, match=r"the hub cannot be reached \(HTTP 503\); loading "
                      r"olmo-test/m@step1000-tokens4B from the local cache"):
        lm = load_model(OLMO, checkpoint=1000, cache_dir=cache)
    assert (lm.info.revision, lm.info.step) == ("step1000-tokens4B", 1000)
    assert fake_hub.refs_asked() == 0
    with pytest.raises(ScalelensError, match=r"^could not load olmo-test/m@step2000-tokens8B: "):
        load_model(OLMO, checkpoint=2000, cache_dir=cache)
    assert fake_hub.refs_asked() == 1

    fake_hub.branches[BLOOM_LIKE] = ["main", f"global_step{first}", f"global_step{second}"]
    write_hub_cache(cache, BLOOM_LIKE, {f"global_step{second}": manifest.checkpoint_dir(size, second)})
    with pytest.raises(ScalelensError, match=rf"^could not load {BLOOM_LIKE}@global_step{first}: "):
        load_model(BLOOM_LIKE, checkpoint=first, cache_dir=cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the listing remembered from the hub's answer
    monkeypatch.setattr(hub_refs, "_listed", {})
    with pytest.raises(ScalelensError, match=rf"^{BLOOM_LIKE}@global_step{first} is not in the local hub"):
        load_model(BLOOM_LIKE, checkpoint=first, cache_dir=cache)
    again = load_model(BLOOM_LIKE, checkpoint=second, cache_dir=cache)
    assert (again.info.revision, again.info.step) == (f"global_step{second}", second)
    named = load_model(BLOOM_LIKE, revision=f"global_step{second}", checkpoint=second, cache_dir=cache)
    assert named.info == again.info

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ScalelensError, match=re.escape(
            f"checkpoint=1000: step 1000 of {OLMO2} is given by 2 revisions (stage1-step1000-tokens4B, "
            "step1000-tokens4B); pass revision= one of them")):
        load_model(OLMO2, checkpoint=1000, cache_dir=cache)
