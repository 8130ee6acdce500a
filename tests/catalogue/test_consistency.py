"""A database keeps its word: random sequences of catalogue writes against a plain reference model.

Hypothesis drives ingest / relabel / re-split / delete / review-join / file moves and removals / sync /
train-a-head / derive (DBA, whitening, ensemble) / refresh on small real images with the tiny encoder.
After every step, each live version's table holds exactly the live images with their current metadata, and
every live image searched by its own stored vector is found at rank 1 in every version.

``LOOKALIKE_CONSISTENCY_EXAMPLES`` sets how many sequences run (CI: the default, seeded).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.catalogue.edits import Selection, delete, holdout, move_to_split, relabel
from engine.encoders.config import HeadConfig
from engine.encoders.whitening import WhiteningConfig
from engine.media.decode import content_id
from engine.search.searcher import Searcher
from engine.storage.database import Database
from engine.versions.coverage import bring_in_step, coverage_of, live_versions
from engine.versions.derived import DBAConfig, publish_derived
from ingest.pipeline import IngestConfig, add_to_catalogue, ingest_folder
from ingest.sync import sync_folder
from tests.support.paths import SAMPLES

CLASSES = ("bag", "coat", "dress", "sandal")
PER_CLASS = 5
LABELS = ("bag", "coat", "dress", "sandal", "other")
SPLITS = ("train", "val", "query")
EXAMPLES = int(os.environ.get("LOOKALIKE_CONSISTENCY_EXAMPLES", "6"))
STEPS = int(os.environ.get("LOOKALIKE_CONSISTENCY_STEPS", "12"))
NO_COPY = IngestConfig(optimize=False)


def _pool() -> list[Path]:
    return [p for cls in CLASSES for p in sorted((SAMPLES / cls).glob("*.png"))[:PER_CLASS]]


class CatalogueMachine(RuleBasedStateMachine):
    """The database under test beside a reference: image id -> {path, label, split}."""

    workdir: Path
    encoder = None

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(self.workdir) / f"run{id(self)}"
        shutil.rmtree(self.root, ignore_errors=True)
        self.source = self.root / "src"
        self.outside = self.root / "joined"  # review decisions bring images from outside the source folder
        self.source.mkdir(parents=True)
        self.outside.mkdir()
        self.db = Database(self.root / "db")
        self.reference: dict[str, dict] = {}
        self.pool = _pool()
        self.placed: dict[Path, Path] = {}  # pool file -> where it is in the source folder
        self.head = None
        self.derived: set[str] = set()

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- the reference's rules for a scan ---------------------------------------------------------

    def _scan_reference(self, remove_gone: bool) -> None:
        """What a re-scan of the source folder does: new content joins (no split), known content takes the
        folder's class, a file whose stored path is gone takes the path it was found at; with ``remove_gone``,
        images under the folder whose file is gone or changed are removed."""
        found: dict[str, Path] = {}
        for path in sorted(self.source.rglob("*.png"), key=lambda p: p.relative_to(self.source).as_posix()):
            found.setdefault(content_id(path.read_bytes()), path)
        for image_id, path in found.items():
            label = path.parent.name
            row = self.reference.get(image_id)
            if row is None:
                self.reference[image_id] = {"path": str(path), "label": label, "split": None}
                continue
            row["label"] = label
            if row["path"] != str(path) and not Path(row["path"]).exists():
                row["path"] = str(path)
        if remove_gone:
            prefix = str(self.source) + "/"
            for image_id in [i for i, r in self.reference.items() if r["path"].startswith(prefix) and i not in found]:
                path = Path(self.reference[image_id]["path"])
                if not path.exists() or content_id(path.read_bytes()) != image_id:
                    del self.reference[image_id]

    def _some(self, data, at_least: int = 1) -> list[str]:
        live = sorted(self.reference)
        return data.draw(st.lists(st.sampled_from(live), min_size=at_least, max_size=max(at_least, len(live) // 2), unique=True))

    # ---- rules --------------------------------------------------------------------------------------

    @initialize(count=st.integers(6, 10))
    def first_ingest(self, count: int) -> None:
        self._place(count)
        ingest_folder(self.db, self.source, NO_COPY, encoder=self.encoder)
        self._scan_reference(remove_gone=False)

    def _place(self, count: int) -> None:
        for source in [p for p in self.pool if p not in self.placed][:count]:
            target = self.source / source.parent.name / source.name
            target.parent.mkdir(exist_ok=True)
            shutil.copy(source, target)
            self.placed[source] = target

    @rule(count=st.integers(1, 4))
    def ingest_more(self, count: int) -> None:
        self._place(count)
        ingest_folder(self.db, self.source, NO_COPY, encoder=self.encoder)
        self._scan_reference(remove_gone=False)

    @precondition(lambda self: self.reference)
    @rule(data=st.data(), label=st.sampled_from(LABELS))
    def relabel_some(self, data, label: str) -> None:
        ids = self._some(data)
        relabel(self.db, Selection(ids=tuple(ids)), label)
        for image_id in ids:
            self.reference[image_id]["label"] = label

    @precondition(lambda self: self.reference)
    @rule(data=st.data(), split=st.sampled_from(SPLITS))
    def move_some(self, data, split: str) -> None:
        ids = self._some(data)
        move_to_split(self.db, Selection(ids=tuple(ids)), split)
        for image_id in ids:
            self.reference[image_id]["split"] = split

    @precondition(lambda self: len(self.reference) >= 8)
    @rule(seed=st.integers(0, 3))
    def hold_out(self, seed: int) -> None:
        report = holdout(self.db, 0.25, "val", seed=seed)
        held = set(self.db.images_frame("split = 'val'", ["id"])["id"].to_list())
        assert report.images <= len(held)
        for image_id, row in self.reference.items():
            if image_id in held:
                row["split"] = "val"

    @precondition(lambda self: len(self.reference) > 3)
    @rule(data=st.data())
    def delete_some(self, data) -> None:
        ids = self._some(data)[: len(self.reference) - 2]
        delete(self.db, Selection(ids=tuple(ids)))
        for image_id in ids:
            del self.reference[image_id]

    @precondition(lambda self: any(p not in self.placed for p in self.pool))
    @rule(label=st.sampled_from(LABELS))
    def review_join(self, label: str) -> None:
        source = next(p for p in self.pool if p not in self.placed)
        target = self.outside / source.name
        shutil.copy(source, target)
        self.placed[source] = target
        image_id = add_to_catalogue(self.db, target, label, self.encoder)
        row = self.reference.setdefault(image_id, {"path": str(target), "label": label, "split": "train"})
        row.update(label=label, split="train")

    @precondition(lambda self: any(t.is_relative_to(self.source) and t.exists() for t in self.placed.values()))
    @rule(data=st.data(), to=st.sampled_from(CLASSES))
    def move_file(self, data, to: str) -> None:
        files = sorted(t for t in self.placed.values() if t.is_relative_to(self.source) and t.exists())
        chosen = data.draw(st.sampled_from(files))
        target = self.source / to / f"moved_{chosen.name}"
        target.parent.mkdir(exist_ok=True)
        chosen.rename(target)
        self.placed = {k: (target if v == chosen else v) for k, v in self.placed.items()}

    @precondition(lambda self: any(t.is_relative_to(self.source) and t.exists() for t in self.placed.values()))
    @rule(data=st.data())
    def remove_file(self, data) -> None:
        files = sorted(t for t in self.placed.values() if t.is_relative_to(self.source) and t.exists())
        data.draw(st.sampled_from(files)).unlink()

    @rule()
    def sync(self) -> None:
        if not any(self.source.rglob("*.png")):
            return  # refused: a folder with no images while the catalogue holds some from it
        sync_folder(self.db, self.source, NO_COPY, self.encoder)
        self._scan_reference(remove_gone=True)

    @precondition(lambda self: self.head is None and len({r["label"] for r in self.reference.values()}) >= 2 and len(self.reference) >= 6)
    @rule()
    def train_a_head(self) -> None:
        from engine.training.api import train
        from engine.training.config import TrainConfig

        base = next(m for m in self.db.find_models() if m.kind == "encoder")
        config = TrainConfig(epochs=1, batch_size=8, head=HeadConfig(out_dim=8, hidden_dim=16), catalogue_where="label IS NOT NULL", min_class_size=1)
        self.head = train(self.db, base, config).model

    @precondition(lambda self: len(self.reference) >= 6)
    @rule(kind=st.sampled_from(("dba", "whiten", "ensemble")))
    def derive(self, kind: str) -> None:
        if kind in self.derived or (kind == "ensemble" and self.head is None):
            return
        base = next(m for m in self.db.find_models() if m.kind == "encoder")
        parents = {"dba": [base], "whiten": [base], "ensemble": [base, self.head]}[kind]
        config = {"dba": DBAConfig(neighbours=3, catalogue_where="label IS NOT NULL"), "whiten": WhiteningConfig(out_dim=4, catalogue_where="label IS NOT NULL"), "ensemble": None}[kind]
        publish_derived(self.db, kind, parents, config)
        self.derived.add(kind)

    @rule()
    def refresh(self) -> None:
        bring_in_step(self.db)

    # ---- what must hold after every step ------------------------------------------------------------

    @invariant()
    def every_version_holds_the_catalogue(self) -> None:
        if not self.reference and not self.db.find_models():
            return
        stored = {r["id"]: r for r in self.db.images_frame(columns=["id", "path", "label", "split"]).iter_rows(named=True)}
        assert set(stored) == set(self.reference)
        for image_id, row in self.reference.items():
            assert (stored[image_id]["path"], stored[image_id]["label"], stored[image_id]["split"]) == (row["path"], row["label"], row["split"]), image_id
        for model in live_versions(self.db):
            table = self.db.embeddings(model).search().select(["image_id", "path", "label", "split"]).limit(None).to_arrow().to_pylist()
            assert sorted(r["image_id"] for r in table) == sorted(self.reference), model.id
            for r in table:
                ref = self.reference[r["image_id"]]
                assert (r["path"], r["label"], r["split"]) == (ref["path"], ref["label"], ref["split"]), (model.id, r["image_id"])
            assert coverage_of(self.db, model).in_step, model.id
            searcher = Searcher(self.db, model)
            ids = sorted(self.reference)
            found = searcher.search_vectors(searcher.vectors_of(ids), k=1)
            top = dict(zip(found["query"].to_list(), found["image_id"].to_list()))
            assert [top[i] for i in range(len(ids))] == ids, model.id


def test_every_write_reaches_every_version(tmp_path, tiny_encoder) -> None:
    CatalogueMachine.workdir = tmp_path
    CatalogueMachine.encoder = tiny_encoder
    runner = CatalogueMachine.TestCase
    runner.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
                               suppress_health_check=list(HealthCheck), database=None)
    runner().runTest()
