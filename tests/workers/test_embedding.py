"""The embedding specialist (``--features minilm``): trains, saves, loads, predicts; refuses an altered head, encoder
folder or manifest; a job pins head and encoder together; without the extra, one clear line.

Trained once per module on 20 Banking77 intents x 8 items (Casanueva et al., 2020, CC BY 4.0). The tests that
encode need the ``embeddings`` extra and are skipped without it; the others run on the default install.
"""

import csv
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cascade.broker.cli import cli
from cascade.broker.settings import Settings
from cascade.broker.submit import build_spec
from cascade.workers import embedding, specialist
from cascade.workers.embedding import Encoder
from cascade.workers.errors import InputError, ModelError
from cascade.workers.manifest import INSTALL_HINT, MANIFEST_FILE, EncoderManifest, Features, read_manifest
from cascade.workers.policy import POLICY_FORMAT
from tests.conftest import dataset

needs_extra = pytest.mark.skipif(not embedding.extra_installed(), reason="needs the embeddings extra")
N_LABELS, PER_LABEL, PER_LABEL_TEST = 20, 8, 10


def banking_subset(split: str, per_label: int) -> tuple[list[str], list[str]]:
    """The first ``per_label`` items of each of the first ``N_LABELS`` intents (sorted by name)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    with (dataset("banking77") / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_label[row["label"]].append(row["text"])
    chosen = sorted(by_label)[:N_LABELS]
    pairs = [(text, label) for label in chosen for text in by_label[label][:per_label]]
    return [t for t, _ in pairs], [label for _, label in pairs]


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    texts, labels = banking_subset("train", PER_LABEL)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled model outside site-packages, as a production folder would be (``--encoder``)."""
    if not embedding.extra_installed():
        pytest.skip("needs the embeddings extra")
    return Path(shutil.copytree(embedding.default_encoder_path(), tmp_path_factory.mktemp("enc") / "minilm"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, train_csv: Path, encoder_dir: Path) -> Path:
    """Trained through the CLI: `cascade train DATA --out MODEL --features minilm --encoder FOLDER`."""
    out = tmp_path_factory.mktemp("model") / "minilm"
    args = ["train", str(train_csv), "--out", str(out), "--features", "minilm", "--encoder", str(encoder_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def model(saved: Path, tmp_path: Path) -> Path:
    """A copy of the saved model folder that a test may alter."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def edit_manifest(folder: Path, encoder_fields: dict[str, object] | None = None, **fields: object) -> None:
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    manifest["encoder"] = manifest["encoder"] and {**manifest["encoder"], **(encoder_fields or {})}
    path.write_text(json.dumps(manifest))


@needs_extra
def test_trained_through_the_cli_loads_and_predicts_well_above_chance(saved: Path, encoder_dir: Path) -> None:
    import torch

    loaded = specialist.load(saved)
    manifest = loaded.manifest
    assert (manifest.features, manifest.format) == (Features.MINILM, "cascade-specialist/2")
    assert manifest.encoder is not None
    assert manifest.encoder.package is None
    assert manifest.encoder.path == str(encoder_dir.resolve())
    assert manifest.encoder.sha256 == embedding.folder_sha256(encoder_dir)
    assert (manifest.encoder.dimension, manifest.encoder.batch_size) == (384, 64)
    assert {"torch", "sentence-transformers"} <= set(manifest.versions)
    assert loaded.sha256 == manifest.identity != manifest.model_sha256
    assert len(loaded.pipeline[-1].calibrated_classifiers_) == 1  # ensemble=False: one regression, not three
    texts, labels = banking_subset("test", PER_LABEL_TEST)
    proba = loaded.predict_proba(texts)
    assert proba.shape == (len(texts), N_LABELS)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    accuracy = np.mean(np.asarray(loaded.labels)[proba.argmax(axis=1)] == np.asarray(labels))
    assert accuracy > 0.6, accuracy  # chance is 0.05
    assert loaded.encoder is not None
    assert loaded.encoder.threads == 1 == torch.get_num_threads()


@needs_extra
def test_a_job_and_a_policy_pin_head_and_encoder(saved: Path, settings: Settings, tmp_path: Path) -> None:
    manifest = read_manifest(saved)
    assert build_spec(settings, saved).model_sha256 == manifest.identity
    assert specialist.load(saved, expected_sha256=manifest.identity).sha256 == manifest.identity
    with pytest.raises(ModelError, match="not the model this job was submitted with"):
        specialist.load(saved, expected_sha256=manifest.model_sha256)  # the head alone is not enough
    policy = tmp_path / "policy.json"
    for pinned, accepted in ((manifest.identity, True), (manifest.model_sha256, False)):
        policy.write_text(json.dumps(policy_fields(pinned, settings.llm_model)))
        if accepted:
            assert build_spec(settings, saved, policy_file=policy).policy is not None
        else:
            with pytest.raises(InputError, match="calibrated for another specialist"):
                build_spec(settings, saved, policy_file=policy)


def policy_fields(specialist_sha256: str, llm_model: str) -> dict[str, object]:
    return {
        "format": POLICY_FORMAT,
        "version": "v1",
        "created_at": 0.0,
        "target_accuracy": 0.9,
        "delta": 0.05,
        "reachable": True,
        "message": "",
        "edges": [0.0, 1.0],
        "escalate": {},
        "bands": [],
        "certificate": None,
        "specialist_sha256": specialist_sha256,
        "llm_model": llm_model,
        "calibration_sha256": "c",
        "calibration_items": 0,
        "mean_llm_tokens": 0.0,
    }


@needs_extra
def test_altered_head_is_refused(model: Path) -> None:
    with (model / specialist.MODEL_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="was altered"):
        specialist.load(model)


@needs_extra
def test_altered_encoder_folder_is_refused(model: Path, encoder_dir: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(encoder_dir, tmp_path / "moved"))
    edit_manifest(model, {"path": str(moved)})
    specialist.load(model)  # a moved folder with the same content is the same encoder
    config = json.loads((moved / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"encoder checksum .* is not the one the manifest names"):
        specialist.load(model)


@needs_extra
def test_manifest_naming_other_checksums_is_refused(model: Path) -> None:
    edit_manifest(model, {"sha256": "0" * 64})
    with pytest.raises(ModelError, match=r"encoder checksum .* is not the one the manifest names"):
        specialist.load(model)
    edit_manifest(model, model_sha256="0" * 64)
    with pytest.raises(ModelError, match="was altered"):
        specialist.load(model)


@needs_extra
def test_other_torch_version_is_refused(model: Path) -> None:
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    edit_manifest(model, versions={**manifest["versions"], "torch": "1.0.0"})
    with pytest.raises(ModelError, match=r"torch 1\.0\.0 \(running"):
        specialist.load(model)


@needs_extra
def test_manifest_that_hides_the_encoder_is_refused(model: Path) -> None:
    edit_manifest(model, features="tfidf")  # still format 2, with an encoder
    with pytest.raises(ModelError, match="does not go with features"):
        specialist.load(model)
    edit_manifest(model, format="cascade-specialist/1", features="tfidf", encoder=None)
    with pytest.raises(ModelError, match="not a head for features 'tfidf'"):
        specialist.load(model)


def test_pickled_weights_and_foreign_modules_are_refused(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    embedding.check_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match=r"pickled weights \(sub/pytorch_model\.bin\)"):
        embedding.check_folder(tmp_path)
    (tmp_path / "sub" / "pytorch_model.bin").unlink()
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "evil.Module"}]))
    with pytest.raises(ModelError, match="modules from outside sentence-transformers"):
        embedding.check_folder(tmp_path)
    (tmp_path / "modules.json").unlink()
    with pytest.raises(ModelError, match=r"no modules\.json"):
        embedding.check_folder(tmp_path)


def test_folder_sha256_covers_paths_and_bytes_not_times(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    (folder / "sub" / "b.txt").write_text("b")
    first = embedding.folder_sha256(folder)
    (folder / "a.json").touch()
    assert embedding.folder_sha256(folder) == first
    (folder / "sub" / "b.txt").rename(folder / "sub" / "c.txt")
    renamed = embedding.folder_sha256(folder)
    assert renamed != first
    (folder / "sub" / "c.txt").write_text("c")
    assert embedding.folder_sha256(folder) not in {first, renamed}
    with pytest.raises(ModelError, match="not an encoder folder"):
        embedding.folder_sha256(tmp_path / "missing")


@needs_extra
def test_the_default_encoder_is_named_by_its_package() -> None:
    encoder = Encoder.open()
    assert encoder.package == embedding.DEFAULT_PACKAGE
    assert encoder.path == embedding.default_encoder_path().resolve()
    entry = EncoderManifest(package=encoder.package, path="/x", sha256=encoder.sha256, dimension=4, batch_size=8)
    assert Encoder.from_manifest(entry).path == encoder.path  # found again in this machine's site-packages


def test_encoder_option_needs_minilm(train_csv: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(train_csv), "--out", str(tmp_path / "m"), "--encoder", "x"])
    assert isinstance(result.exception, InputError)
    assert "--encoder: only with --features minilm" in str(result.exception)


BLOCKED = "import sys; sys.modules['sentence_transformers'] = None  # as if the extra were missing\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_without_the_extra_training_says_so_in_one_line(train_csv: Path, tmp_path: Path) -> None:
    args = ["cascade", "train", str(train_csv), "--out", str(tmp_path / "m"), "--features", "minilm"]
    done = run_python(BLOCKED + f"from cascade.broker.cli import main; sys.argv = {args!r}; main()")
    assert done.returncode == 3, done.stderr  # an input error: the model's features need the extra
    assert done.stderr.strip() == f"error: {INSTALL_HINT}"
    assert not (tmp_path / "m").exists()


@needs_extra
def test_without_the_extra_loading_says_so(saved: Path) -> None:
    code = f"""from cascade.workers import specialist
try:
    specialist.load({str(saved)!r})
except specialist.ModelError as e:
    print(e)
"""
    done = run_python(BLOCKED + code)
    assert done.stdout.strip() == INSTALL_HINT, done.stderr


def test_tfidf_never_imports_torch(sms_model: Path) -> None:
    code = f"""import sys
from cascade.broker import cli, submit
from cascade.workers import pipeline, specialist
specialist.load({str(sms_model)!r}).predict_proba(["win a prize now", "see you at 5"])
print(sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules))
"""
    done = run_python(code)
    assert done.stdout.strip() == "[]", done.stderr
