"""Untrusted files: checkpoints that try to run code, hostile archives, damaged datasets.

Every hostile input must be refused with exit code 2 and a message that says why, must never run
the code it carries (a marker file it would create stays absent) and must never write outside the
place it is read from. Decoders are also fuzzed: any bytes give a dataset or a ``UserError``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import resource
import struct
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reliability_support import (
    code_payloads,
    figures,  # noqa: F401 - fixture
    observed,
    png_bytes,
    random_png,
    run_cli,
    tar_member,
    tar_with_declared_size,
    traceback_in,
    valid_members,
    write_tar,
    write_zip,
)
from resnet_deploy import data as data_module
from resnet_deploy.checkpoint import DIGEST_KEY, content_digest, load_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(tmp_path / "cache"))


def invoke(*args: str, counts: Counter | None = None):
    """The CLI in-process. With ``counts``, a traceback (in the output, or an exception other than
    SystemExit) is counted under "tracebacks" before the test fails on it."""
    result = CliRunner().invoke(main, ["-q", *args])
    crashed = traceback_in(result.output) or not (result.exception is None or isinstance(result.exception, SystemExit))
    if counts is not None:
        counts["tracebacks"] += crashed
    assert not crashed, f"{result.output}\n{result.exception!r}"
    return result


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------------------------- checkpoints


def _containers(obj) -> dict[str, bytes]:
    """The same object as torch.save writes it (zip) and as raw pickles of several protocols."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return {
        "torch-zip": buffer.getvalue(),
        "pickle-p0": pickle.dumps(obj, protocol=0),
        "pickle-p2": pickle.dumps(obj, protocol=2),
        "pickle-p5": pickle.dumps(obj, protocol=5),
    }


def test_code_running_checkpoints_are_refused(tmp_path, synthetic_checkpoint, figures):
    """A checkpoint whose pickle would call os.system/exec/eval/subprocess: refused by load_checkpoint
    and by ``resnet-deploy eval`` (exit 2), the code never runs. The payload hides both at the top
    level and inside an otherwise valid checkpoint."""
    marker = tmp_path / "pwned"
    genuine = torch.load(synthetic_checkpoint, weights_only=True)
    keys = ("files tried", "refused by load_checkpoint", "refused by eval (exit 2)", "code ran", "tracebacks")
    with observed(figures, "code_running_checkpoints", *keys) as counts:
        for payload_name, payload in code_payloads(marker).items():
            for shape, obj in (("bare", {"x": payload}), ("inside-valid-checkpoint", {**genuine, "history": [payload]})):
                for container, blob in _containers(obj).items():
                    path = tmp_path / f"{payload_name}-{shape}-{container}.pt"
                    path.write_bytes(blob)
                    counts["files tried"] += 1
                    with pytest.raises(UserError, match="was refused") as info:
                        load_checkpoint(path)
                    counts["refused by load_checkpoint"] += 1
                    # Protocol 0 and 5 pickles stop at an opcode the weights-only unpickler lacks (DICT, FRAME)
                    # before it reaches the global; the others name the global in the message.
                    if container in ("torch-zip", "pickle-p2"):
                        assert "holds objects other than tensors" in str(info.value) and "could run code" in str(info.value)
                    result = invoke("eval", str(path), "--dataset", "synthetic", counts=counts)
                    counts["refused by eval (exit 2)"] += result.exit_code == 2 and "was refused" in result.output
                    counts["code ran"] += marker.exists()
                    assert result.exit_code == 2, result.output
                    assert "was refused" in result.output
                    assert not marker.exists(), f"{payload_name} in {container} ran code"


def test_weights_only_cannot_be_switched_off_from_the_environment(tmp_path):
    """torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only when a caller leaves weights_only unset;
    the real ``resnet-deploy`` process still refuses (exit 2, no marker)."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": code_payloads(marker)["os.system"]}, evil)
    result = run_cli(
        ["eval", str(evil), "--dataset", "synthetic"], cwd=tmp_path, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    )
    assert result.returncode == 2, result.stderr
    assert "was refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_truncated_and_bit_flipped_checkpoints(tmp_path, synthetic_checkpoint, figures):
    """A checkpoint cut short anywhere is refused with a message. A flipped bit anywhere is refused
    (the digest stored in the checkpoint no longer matches) or, where it hits bytes that carry no
    content (zip padding, unused header fields), loads exactly the original weights."""
    blob = synthetic_checkpoint.read_bytes()
    original = load_checkpoint(synthetic_checkpoint).model.state_dict()
    rng = np.random.default_rng(7)
    keys = ("truncated: tried", "truncated: refused", "bit flip: tried", "bit flip: refused",
            "bit flip: loaded, weights identical (flip in padding)", "loaded with changed weights", "flip inside conv1.weight: refused")  # fmt: skip
    with observed(figures, "damaged_checkpoints", *keys) as outcomes:
        for cut in sorted(set(rng.integers(1, len(blob), 40).tolist()) | {1, 100, len(blob) - 1}):
            path = tmp_path / "cut.pt"
            path.write_bytes(blob[:cut])
            outcomes["truncated: tried"] += 1
            with pytest.raises(UserError, match="corrupt or not a torch file|damaged or not a torch file|not a resnet-deploy"):
                load_checkpoint(path)
            outcomes["truncated: refused"] += 1
        for position in rng.integers(0, len(blob), 60).tolist():
            damaged = bytearray(blob)
            damaged[position] ^= 1 << int(rng.integers(0, 8))
            path = tmp_path / "flip.pt"
            path.write_bytes(bytes(damaged))
            outcomes["bit flip: tried"] += 1
            try:
                loaded = load_checkpoint(path)
            except UserError as exc:
                assert "corrupt" in str(exc) or "damaged" in str(exc) or "malformed" in str(exc) or "not a resnet-deploy" in str(exc)
                outcomes["bit flip: refused"] += 1
            else:
                state = loaded.model.state_dict()
                identical = all(torch.equal(state[key], original[key]) for key in original)
                outcomes["bit flip: loaded, weights identical (flip in padding)" if identical else "loaded with changed weights"] += 1
                assert identical, f"flip at {position} changed weights"
        # A flip inside the first weight tensor's bytes: the case a zip CRC would catch, and torch's reader does not.
        raw = torch.load(synthetic_checkpoint, weights_only=True)
        first = raw["state_dict"]["conv1.weight"].numpy().tobytes()
        position = blob.index(first[:64]) + 8
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        (tmp_path / "weight-flip.pt").write_bytes(bytes(damaged))
        assert not torch.equal(torch.load(tmp_path / "weight-flip.pt", weights_only=True)["state_dict"]["conv1.weight"], raw["state_dict"]["conv1.weight"])
        with pytest.raises(UserError, match="does not match the digest stored in it"):
            load_checkpoint(tmp_path / "weight-flip.pt")
        outcomes["flip inside conv1.weight: refused"] += 1


def _edited_checkpoint(source: Path, target: Path, edit) -> Path:
    """The checkpoint with ``edit`` applied and its digest made to match, as another tool (or an
    attacker) would write it: what is refused then is the content, not the digest."""
    raw = torch.load(source, weights_only=True)
    edit(raw)
    raw.pop(DIGEST_KEY, None)
    torch.save({**raw, DIGEST_KEY: content_digest(raw)}, target)
    return target


def _set(path: list, value):
    def edit(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("case", "edit", "message"),
    [
        ("other model", _set(["model", "name"], "resnet32"), "does not match model resnet32"),
        ("other class count", _set(["model", "num_classes"], 100), "fc.weight has shape (10, 64), the model needs (100, 64)"),
        ("absurd class count", _set(["model", "num_classes"], 10**9), "the model needs (1000000000, 64)"),
        ("absurd depth", _set(["model", "name"], "resnet600000002"), "unknown model 'resnet600000002'"),
        ("unknown shortcut", _set(["model", "shortcut"], "Z"), "shortcut must be one of"),
        ("no format tag", _set(["format"], "something-else"), "not a resnet-deploy checkpoint"),
        ("newer format", _set(["version"], 99), "newer resnet-deploy"),
        ("state_dict not tensors", _set(["state_dict"], [1, 2, 3]), "'state_dict' is not a dict of tensors"),
        ("bad normalization", _set(["normalization"], {"mean": [0.5], "std": [0, 0, 0]}), "'normalization' is not"),
        ("NaN weights", lambda raw: raw["state_dict"]["fc.weight"].fill_(float("nan")), "NaN or infinite values in fc.weight"),
        ("model spec not a dict", _set(["model"], "resnet20"), "'model' is not a model spec"),
    ],
)
def test_checkpoint_of_another_model_or_malformed_is_refused(tmp_path, synthetic_checkpoint, case, edit, message):
    """Through ``resnet-deploy eval``: exit 2 with a message naming the mismatch. The absurd class count
    is refused before any memory is allocated for it (the model is first built on the meta device)."""
    path = _edited_checkpoint(synthetic_checkpoint, tmp_path / "edited.pt", edit)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = invoke("eval", str(path), "--dataset", "synthetic")
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert time.perf_counter() - started < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 1 << 20  # KiB: under 1 GiB more


def test_eval_refuses_checkpoint_for_another_dataset(tmp_path, synthetic_checkpoint, monkeypatch):
    """A 10-class checkpoint on a 100-class dataset, and on a dataset with other class names: exit 2."""
    hundred = data_module.synthetic_dataset(num_classes=100, train_size=200, test_size=100)
    monkeypatch.setattr(data_module, "synthetic_dataset", lambda: hundred)
    result = invoke("eval", str(synthetic_checkpoint), "--dataset", "synthetic")
    assert result.exit_code == 2 and "has 10 classes but dataset synthetic has 100" in result.output
    renamed = data_module.synthetic_dataset()
    renamed.classes = [f"other{i}" for i in range(10)]
    monkeypatch.setattr(data_module, "synthetic_dataset", lambda: renamed)
    result = invoke("eval", str(synthetic_checkpoint), "--dataset", "synthetic")
    assert result.exit_code == 2 and "was trained on classes" in result.output


# --------------------------------------------------------------------------------------------- CIFAR pickles


def _write_cifar10_batches(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in data_module.CIFAR10_CLASSES]}))
    return folder


@pytest.mark.parametrize("payload_name", ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"])
@pytest.mark.parametrize("packaging", ["folder", "tar.gz"])
def test_cifar_batch_with_code_is_refused(tmp_path, payload_name, packaging):
    """The official CIFAR format is pickles: one that names any global but numpy's array
    reconstructors is refused through ``resnet-deploy data`` and the code never runs."""
    marker = tmp_path / "pwned"
    folder = _write_cifar10_batches(tmp_path / "raw" / "cifar-10-batches-py")
    payload = code_payloads(marker)[payload_name]
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2))
    source = tmp_path / "raw"
    if packaging == "tar.gz":
        source = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    result = invoke("data", "--dataset", "cifar10", "--data-dir", str(source))
    assert result.exit_code == 2, result.output
    assert "is not a valid CIFAR batch: refusing to load" in result.output
    assert not marker.exists()


def test_valid_cifar_batches_still_load(tmp_path):
    _write_cifar10_batches(tmp_path / "raw" / "cifar-10-batches-py")
    result = invoke("data", "--dataset", "cifar10", "--data-dir", str(tmp_path / "raw"))
    assert result.exit_code == 0, result.output
    assert '"train_size": 100' in result.output


# --------------------------------------------------------------------------------------------- archives


def _hostile_archives(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, expected message). Each holds a valid dataset plus one hostile member."""
    good = valid_members()
    big = b"\0" * (8 << 20)
    cases = {
        "tar absolute path": (write_tar(tmp / "abs.tar.gz", [*good, ("/tmp/data/train/cats/evil.png", png_bytes())]), "has an absolute path"),
        "tar dot-dot": (write_tar(tmp / "dotdot.tar.gz", [*good, ("data/train/../../../escaped.png", png_bytes())]), "points outside the archive"),
        "tar symlink": (write_tar(tmp / "symlink.tar.gz", good, [tar_member("data/train/cats/x.png", tarfile.SYMTYPE, "/etc/passwd")]), "is a link"),
        "tar hardlink": (write_tar(tmp / "hardlink.tar.gz", good, [tar_member("data/train/cats/x.png", tarfile.LNKTYPE, "/etc/passwd")]), "is a link"),
        "tar char device": (write_tar(tmp / "chr.tar.gz", good, [tar_member("data/train/cats/x.png", tarfile.CHRTYPE)]), "device or special file"),
        "tar block device": (write_tar(tmp / "blk.tar.gz", good, [tar_member("data/train/cats/x.png", tarfile.BLKTYPE)]), "device or special file"),
        "tar fifo": (write_tar(tmp / "fifo.tar.gz", good, [tar_member("data/train/cats/x.png", tarfile.FIFOTYPE)]), "device or special file"),
        "tar declared 10 GiB": (tar_with_declared_size(tmp / "bomb.tar", good, "data/train/cats/bomb.png", 10 << 30), "exceed the size limit"),
        "tar truncated": (_truncated(write_tar(tmp / "cut.tar.gz", good), 0.6), "corrupt or truncated"),
        "zip absolute path": (write_zip(tmp / "abs.zip", [*good, ("/tmp/evil.png", png_bytes())]), "has an absolute path"),
        "zip dot-dot": (write_zip(tmp / "dotdot.zip", [*good, ("data/../../escaped.png", png_bytes())]), "points outside the archive"),
        "zip backslash dot-dot": (write_zip(tmp / "backslash.zip", [*good, ("data\\..\\..\\escaped.png", png_bytes())]), "points outside the archive"),
        "zip drive letter": (write_zip(tmp / "drive.zip", [*good, ("C:/evil.png", png_bytes())]), "has an absolute path"),
        "zip symlink": (write_zip(tmp / "symlink.zip", good, [("data/train/cats/x.png", 0o120777, b"/etc/passwd")]), "is a link or special file"),
        "zip char device": (write_zip(tmp / "chr.zip", good, [("data/train/cats/x.png", 0o020666, b"")]), "is a link or special file"),
        "zip member over 64 MiB declared": (_declare_zip_size(write_zip(tmp / "declared.zip", [*good, ("data/train/cats/z.png", big)]), "data/train/cats/z.png", 0xFFFFFF00), "exceed the size limit"),
        "zip member larger than declared": (_declare_zip_size(write_zip(tmp / "liar.zip", [*good, ("data/train/cats/z.png", big)]), "data/train/cats/z.png", 1000), "corrupt or truncated"),
        "zip encrypted member": (_mark_encrypted(write_zip(tmp / "enc.zip", good)), "is encrypted"),
        "zip truncated": (_truncated(write_zip(tmp / "cut.zip", good), 0.7), "not a valid zip archive"),
    }
    return cases


def _truncated(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _central_directory_entries(data: bytes):
    position = data.find(b"PK\x01\x02")
    while position >= 0:
        name_length = struct.unpack_from("<H", data, position + 28)[0]
        yield position, data[position + 46 : position + 46 + name_length].decode()
        position = data.find(b"PK\x01\x02", position + 46 + name_length)


def _declare_zip_size(path: Path, member: str, declared: int) -> Path:
    """Rewrite the uncompressed size that the central directory declares for ``member``."""
    data = bytearray(path.read_bytes())
    for position, name in _central_directory_entries(bytes(data)):
        if name == member:
            struct.pack_into("<I", data, position + 24, declared)
    path.write_bytes(bytes(data))
    return path


def _mark_encrypted(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    for position, _ in _central_directory_entries(bytes(data)):
        data[position + 8] |= 1
    path.write_bytes(bytes(data))
    return path


def test_hostile_archives_are_refused(tmp_path, figures):
    """Through ``resnet-deploy data --dataset imagefolder``: absolute paths, ``..``, links, devices,
    FIFOs, declared-size bombs, encrypted and truncated archives. Exit 2 with the reason; nothing
    appears outside the work folder (archives are read in memory, never extracted)."""
    work = tmp_path / "work"
    work.mkdir()
    cases = _hostile_archives(work)
    before = files_under(tmp_path)
    keys = ("archives tried", "refused (exit 2, reason named)", "tracebacks", "files written outside")
    with observed(figures, "hostile_archives", *keys, extra=lambda: {"slowest refusal s": round(max(seconds, default=0.0), 2)}) as counts:
        seconds = []
        for case, (archive, message) in cases.items():
            started = time.perf_counter()
            counts["archives tried"] += 1
            result = invoke("data", "--dataset", "imagefolder", "--data-dir", str(archive), counts=counts)
            seconds.append(time.perf_counter() - started)
            counts["refused (exit 2, reason named)"] += result.exit_code == 2 and message in result.output
            assert result.exit_code == 2, (case, result.output)
            assert message in result.output, (case, result.output)
            assert seconds[-1] < 30, case
        created = files_under(tmp_path) - before
        outside = [name for name in created if not name.startswith("cache")]
        escaped = list(tmp_path.parent.rglob("escaped.png")) + [p for p in [Path("/tmp/evil.png")] if p.exists()]
        counts["files written outside"] += len(outside) + len(escaped)
        assert not outside, outside
        assert not escaped, escaped


def test_archive_size_limit_from_environment(tmp_path, monkeypatch):
    """RESNET_DEPLOY_MAX_ARCHIVE_BYTES bounds the total declared size: a real process with a 10 KB
    limit refuses an archive of ~20 KB of images (in-process the module constant is patched)."""
    archive = write_tar(tmp_path / "data.tar.gz", valid_members(per_class=3))
    result = run_cli(
        ["data", "--dataset", "imagefolder", "--data-dir", str(archive)],
        cwd=tmp_path,
        env={"RESNET_DEPLOY_MAX_ARCHIVE_BYTES": "10000", "RESNET_DEPLOY_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2 and "exceed the size limit" in result.stderr, result.stderr
    assert "RESNET_DEPLOY_MAX_ARCHIVE_BYTES" in result.stderr
    monkeypatch.delenv(data_module.MAX_ARCHIVE_BYTES_ENV, raising=False)  # in-process: the default limit, patched
    # Patched where max_archive_bytes reads it (the package only re-exports it).
    monkeypatch.setattr(data_module.archive, "MAX_ARCHIVE_BYTES", 10_000)
    assert invoke("data", "--dataset", "imagefolder", "--data-dir", str(archive)).exit_code == 2
    monkeypatch.setattr(data_module.archive, "MAX_ARCHIVE_BYTES", 1 << 30)
    assert invoke("data", "--dataset", "imagefolder", "--data-dir", str(archive)).exit_code == 0


# --------------------------------------------------------------------------------------------- folders


def _image_folder(root: Path, classes=("cats", "dogs"), per_class: int = 2, splits=("train", "test")) -> Path:
    for split in splits:
        for index, label in enumerate(classes):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / split / label / f"{i}.png").write_bytes(random_png(index * 10 + i))
    return root


def test_folder_with_links_or_special_files_is_refused(tmp_path):
    root = _image_folder(tmp_path / "links")
    (root / "train" / "cats" / "link.png").symlink_to(root / "train" / "cats" / "0.png")
    result = invoke("data", "--dataset", "imagefolder", "--data-dir", str(root))
    assert result.exit_code == 2 and "is a symbolic link" in result.output
    root = _image_folder(tmp_path / "fifo")
    os.mkfifo(root / "train" / "cats" / "pipe.png")
    result = invoke("data", "--dataset", "imagefolder", "--data-dir", str(root))  # must not block reading it
    assert result.exit_code == 2 and "device file, FIFO or socket" in result.output


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("extra class in train", "only in train: ['birds']"),
        ("class missing from test", "only in train: ['dogs']"),
        ("no test split", "has no images under train/<class>/ and test/<class>/"),
        ("cifar10 with 9 classes", "not CIFAR-10's"),
        ("wrong size", "is 40x32; images must be 32x32"),
        ("not an image", "is not a readable image"),
        ("huge declared image", "is not a readable image: DecompressionBombError"),
    ],
)
def test_bad_dataset_folders_are_refused(tmp_path, layout, message):
    root = _image_folder(tmp_path / "ds")
    dataset = "imagefolder"
    if layout == "extra class in train":
        _image_folder(root, classes=("birds",), splits=("train",))
    elif layout == "class missing from test":
        for file in (root / "test" / "dogs").iterdir():
            file.unlink()
    elif layout == "no test split":
        for file in (root / "test").rglob("*.png"):
            file.unlink()
    elif layout == "cifar10 with 9 classes":
        root = _image_folder(tmp_path / "cifar", classes=data_module.CIFAR10_CLASSES[:9], per_class=1)
        dataset = "cifar10"
    elif layout == "wrong size":
        Image.new("RGB", (40, 32)).save(root / "test" / "dogs" / "wide.png")
    elif layout == "not an image":
        (root / "train" / "cats" / "notes.png").write_bytes(b"this is not a PNG file")
    elif layout == "huge declared image":
        (root / "train" / "cats" / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    result = invoke("data", "--dataset", dataset, "--data-dir", str(root))
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def _png_header(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("1", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("RGB", "WEBP")],
)
def test_images_of_other_modes_are_converted_to_rgb(tmp_path, mode, fmt):
    """Grey, bilevel, palette, alpha, 16-bit and CMYK images become 32x32 RGB uint8."""
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    image = base.convert(mode) if mode not in ("I;16",) else base.convert("L").convert("I").convert("I;16")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = data_module.decode_image(buffer.getvalue(), f"x.{fmt.lower()}")
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    if mode in ("RGB", "RGBA") and fmt != "JPEG":
        np.testing.assert_array_equal(decoded, np.asarray(base))
    if mode == "L":
        grey = np.asarray(base.convert("L"))
        assert all(np.array_equal(decoded[..., c], grey) for c in range(3))


# --------------------------------------------------------------------------------------------- fuzzing


def _seed_images() -> list[bytes]:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seeds = []
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds


def _mutations():
    return st.lists(
        st.tuples(st.sampled_from(["flip", "delete", "insert"]), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16)),
        min_size=1,
        max_size=6,
    )


def _mutate(data: bytes, mutations) -> bytes:
    buffer = bytearray(data)
    for kind, where, blob in mutations:
        position = int(where * len(buffer)) if buffer else 0
        if kind == "flip" and buffer:
            buffer[position] ^= blob[0] or 1
        elif kind == "delete":
            del buffer[position : position + len(blob) * 64]
        else:
            buffer[position:position] = blob
    return bytes(buffer)


def _fuzz_reader(figures, name: str, seeds: list[bytes], read, accepted: str) -> None:
    """Feed mutated ``seeds`` to ``read(blob)``: it returns (counted as ``accepted``) or raises UserError.

    ``read`` asserts what a returned value must be; any other exception is counted and fails the test.
    """
    with observed(figures, name, "inputs", accepted, "refused", "other exceptions") as outcomes:

        @FUZZ
        @given(st.integers(0, len(seeds) - 1), _mutations())
        def check(seed_index, mutations):
            outcomes["inputs"] += 1
            with _counting_other_exceptions(outcomes):
                try:
                    read(_mutate(seeds[seed_index], mutations))
                except UserError:
                    outcomes["refused"] += 1
                else:
                    outcomes[accepted] += 1

        check()


def test_fuzz_image_decoder(figures):
    """Mutated PNG/JPEG/BMP/GIF/TIFF/WebP/PPM bytes: a 32x32 RGB array or a UserError, nothing else."""

    def decode(blob):
        image = data_module.decode_image(blob, "fuzzed")
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8

    _fuzz_reader(figures, "fuzz_image_decoder", _seed_images(), decode, "decoded")


def test_fuzz_cifar_unpickler(figures):
    """Mutated CIFAR batch pickles (protocols 0-5): a dict or a UserError; never a global outside numpy."""
    batch = {b"data": np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072), b"labels": [1, 2, 3, 4], b"batch_label": b"x"}
    seeds = [pickle.dumps(batch, protocol=p) for p in range(6)]
    _fuzz_reader(figures, "fuzz_cifar_unpickler", seeds, lambda blob: data_module._unpickle(blob, "fuzzed"), "loaded")


def test_fuzz_archive_reader(tmp_path, figures):
    """Mutated and truncated tar.gz, tar.xz and zip datasets: an ImageDataset or a UserError."""
    members = valid_members(per_class=2)
    seeds = {
        ".tar.gz": write_tar(tmp_path / "seed.tar.gz", members).read_bytes(),
        ".tar.xz": write_tar(tmp_path / "seed.tar.xz", members, mode="w:xz").read_bytes(),
        ".tar": write_tar(tmp_path / "seed.tar", members, mode="w").read_bytes(),
        ".zip": write_zip(tmp_path / "seed.zip", members).read_bytes(),
    }
    suffixes = sorted(seeds)

    with observed(figures, "fuzz_archive_reader", "inputs", "read", "refused", "other exceptions") as outcomes:

        @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(suffixes), _mutations(), st.floats(0.05, 1.0))
        def check(suffix, mutations, keep):
            blob = _mutate(seeds[suffix], mutations)
            path = tmp_path / f"fuzzed{suffix}"
            path.write_bytes(blob[: max(1, int(len(blob) * keep))])
            outcomes["inputs"] += 1
            with _counting_other_exceptions(outcomes):
                try:
                    data_module.read_image_folder(path)
                except UserError:
                    outcomes["refused"] += 1
                else:
                    outcomes["read"] += 1

        check()


@contextlib.contextmanager
def _counting_other_exceptions(outcomes: Counter):
    """Count an exception other than UserError (a traceback for the user) before letting it fail the test.
    (Hypothesis replays a failing input while shrinking it: the count is of runs, not of distinct inputs.)"""
    try:
        yield
    except Exception:
        outcomes["other exceptions"] += 1
        raise


# --------------------------------------------------------------------------------------------- other stages


@pytest.mark.slow
def test_quantize_artifact_cannot_run_code(tmp_path, synthetic_checkpoint):
    """A quantize artifact whose program.pt2 marks one weight as pickled and puts a code-running pickle
    there (manifest hash updated, as an attacker would) must be refused without running the code."""
    import hashlib
    import json

    from resnet_deploy.quantize import load_quantized

    made = invoke(
        "quantize", str(synthetic_checkpoint), "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32",
        "--calib-size", "32", "--method", "minmax", "-o", str(tmp_path / "genuine"),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    for file in (tmp_path / "genuine").iterdir():
        (evil / file.name).write_bytes(file.read_bytes())
    payload = io.BytesIO()
    torch.save(code_payloads(marker)["os.system"], payload)
    with zipfile.ZipFile(tmp_path / "genuine" / "program.pt2") as source, zipfile.ZipFile(evil / "program.pt2", "w") as target:
        weights_config = next(name for name in source.namelist() if name.endswith("weights_config.json"))
        config = json.loads(source.read(weights_config))
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        pickled_file = config["config"][first]["path_name"]
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == weights_config:
                data = json.dumps(config).encode()
            elif info.filename.endswith(f"/weights/{pickled_file}"):
                data = payload.getvalue()
            target.writestr(info, data)
    manifest = json.loads((evil / "manifest.json").read_text())
    manifest["files"]["program_sha256"] = hashlib.sha256((evil / "program.pt2").read_bytes()).hexdigest()
    (evil / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError):
        load_quantized(evil)
    assert not marker.exists(), "loading the quantize artifact ran the code its program.pt2 carried"
