"""The shared file helpers, by what the stages rely on: the JSON files they write and read back,
the clean-up of temporaries a killed write left, the up-front output-directory check, and the
refusal of damaged torch files. (File modes: test_fileio_modes.py; kills and faults: test_reliability_*.)"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy import fileio
from resnet_deploy.errors import UserError


def test_write_json_writes_numpy_values_and_paths_as_plain_json(tmp_path):
    """Results hold numpy scalars and arrays (latencies, confusion counts) and paths: written as plain
    JSON numbers, lists and strings that any reader loads."""
    fileio.write_json(tmp_path / "r.json", {"p50_ms": np.float32(0.5), "counts": np.arange(3), "onnx": Path("m/model.onnx")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"p50_ms": 0.5, "counts": [0, 1, 2], "onnx": "m/model.onnx"}


def test_write_json_refuses_what_json_cannot_hold_and_keeps_the_old_file(tmp_path):
    """A value with no JSON form is a bug of the caller: a TypeError naming its type, raised before
    anything is written, so the previous file is intact and no temporary is left."""
    target = tmp_path / "r.json"
    fileio.write_json(target, {"ok": 1})
    with pytest.raises(TypeError, match=r"\bset\b"):
        fileio.write_json(target, {"tags": {"a", "b"}})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_write_json_keeps_the_committed_layout(tmp_path):
    """Results and manifests are committed: two-space indent, keys in the order written (not sorted),
    a final newline, so a rewrite with the same content is byte-identical and a diff shows only changes."""
    fileio.write_json(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "r.json").read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_read_json_reads_utf8_and_names_a_missing_or_broken_file(tmp_path):
    """Files are UTF-8 whatever the locale (class names, GPU names may not be ASCII); a missing or
    broken file is a UserError naming it."""
    path = tmp_path / "classes.json"
    path.write_bytes(json.dumps({"classes": ["café", "Straße"]}, ensure_ascii=False).encode("utf-8"))
    assert fileio.read_json(path) == {"classes": ["café", "Straße"]}
    with pytest.raises(UserError, match="absent.json"):
        fileio.read_json(tmp_path / "absent.json", "engine sidecar")
    path.write_text("{not json")
    with pytest.raises(UserError, match="classes.json"):
        fileio.read_json(path)


def test_remove_stale_temporaries_of_the_named_files_only(tmp_path):
    """A stage removes the temporaries its own files left (``.last.pt.XXXX.tmp``), not another
    stage's in the same folder, nor the files themselves."""
    for name in ("last.pt", ".last.pt.a1b2.tmp", ".best.pt.c3d4.tmp", ".results.json.e5f6.tmp"):
        (tmp_path / name).write_bytes(b"x")
    removed = fileio.remove_stale_temporaries(tmp_path, ["last.pt", "best.pt"])
    assert sorted(p.name for p in removed) == [".best.pt.c3d4.tmp", ".last.pt.a1b2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.json.e5f6.tmp", "last.pt"]
    assert [p.name for p in fileio.remove_stale_temporaries(tmp_path)] == [".results.json.e5f6.tmp"]


def test_remove_stale_temporaries_goes_on_past_one_it_cannot_remove(tmp_path):
    """One that cannot be removed (here a folder of that name) is left and not reported; the others
    are still removed and the stage starts."""
    (tmp_path / ".last.pt.a1b2.tmp").mkdir()
    (tmp_path / ".last.pt.c3d4.tmp").write_bytes(b"x")
    removed = fileio.remove_stale_temporaries(tmp_path, ["last.pt"])
    assert [p.name for p in removed] == [".last.pt.c3d4.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == [".last.pt.a1b2.tmp"]


def test_ensure_writable_dir_makes_nested_folders_and_leaves_no_probe(tmp_path):
    output = tmp_path / "runs" / "r20" / "seed0"
    assert fileio.ensure_writable_dir(output) == output
    assert output.is_dir() and list(output.iterdir()) == []


def test_ensure_writable_dir_states_the_cause(tmp_path):
    """As docs/reliability.md quotes it: "--output … is not writable: <the system's reason>"."""
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UserError) as refused:
        fileio.ensure_writable_dir(tmp_path / "file" / "run", what="--output")
    assert str(refused.value) == f"--output {tmp_path / 'file' / 'run'} is not writable: Not a directory"


def test_damaged_torch_file_refusal_gives_the_reason(tmp_path):
    """Bytes torch's reader cannot parse: refused as damaged, with the opcode it stopped at."""
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"\x80\x02\xff\xff")
    with pytest.raises(UserError, match=r"damaged or not a torch file.*\(Unsupported operand 255\)") as refused:
        fileio.torch_load_safe(path, "checkpoint")
    assert refused.value.hint


def test_a_raw_pickle_cut_short_anywhere_is_refused(tmp_path):
    """torch.load reads raw pickles too; cut short, torch's weights-only reader raises IndexError or
    struct.error at many places: each is refused as corrupt (exit 2), never a traceback."""
    blob = pickle.dumps({"classes": ["cat", "dog"], "top1": 91.5, "shape": (3, 32, 32)}, protocol=2)
    path = tmp_path / "cut.pt"
    for cut in range(1, len(blob)):
        path.write_bytes(blob[:cut])
        with pytest.raises(UserError, match="corrupt|damaged"):
            fileio.torch_load_safe(path, "checkpoint")
