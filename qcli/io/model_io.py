"""The one place that loads and saves models: external data, >2 GB, atomic writes, opset upgrades.

Nothing here serializes or measures a whole in-memory model that may exceed protobuf's 2 GB limit: sizes,
shape inference, checks and opset conversion work on a skeleton without the weights (qcli.io.detach), and
weights are written one tensor at a time."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx import ModelProto, version_converter
from onnx.external_data_helper import load_external_data_for_model

from qcli.core.errors import InputError
from qcli.core.graph import broken
from qcli.io.detach import Skeleton, as_inputs, copy_fields, replace_fields
from qcli.io.session import runtime_problem
from qcli.io.structure import read_structure
from qcli.io.untrusted import check_external_data

# Protobuf cannot serialize a message over 2 GB; leave headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load(path: str | Path, weights: bool = True) -> ModelProto:
    """The model in `path`, checked to be one onnxruntime can load. weights=False: its structure only (graph,
    inputs, outputs, tensor headers), for reading; the large initializers have no data, so never save it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.onnx") if p.is_file())[:3]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise InputError(f"{path} is a folder, not an ONNX model file{hint}")
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:  # the file parsed once; external data not followed yet
        model = onnx.load(str(path), load_external_data=False) if weights else read_structure(path)
    except Exception as e:  # protobuf's DecodeError, a malformed file
        raise InputError(f"cannot read {path} as an ONNX model ({type(e).__name__}: {e})") from e
    check_external_data(model, path.parent)  # every location, and the inline tensors' bytes, before any is read
    why = broken(model.graph)
    if why:
        raise InputError(f"{path.name} cannot run: {why}")
    if weights:
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise InputError(f"cannot read {path}'s external data ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise InputError(f"{path} has an empty graph: is it really an ONNX model?")
    problem = runtime_problem(model.ir_version, onnx_opset(model))
    if problem:
        raise InputError(f"{path.name}: {problem}")
    return model


def model_bytes(model: ModelProto) -> int:
    """The model's serialized size (to a few bytes a tensor), without serializing it."""
    return Skeleton(model).nbytes


def save_atomic(model: ModelProto, out: str | Path) -> Path:
    """Write model (and its external data, when large) to a temp folder beside `out`, then rename.

    The rename of the model file is the commit point. Before it, a failure or Ctrl-C leaves every file as
    it was (a previous `out` keeps its own data file, since new data never takes a name in use); after
    it, the data files the previous `out` referenced are removed."""
    out = Path(out)
    with unwritable(out):
        return _save_atomic(model, out)


def _save_atomic(model: ModelProto, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_strays(out)
    old_data = external_data_files(out) if out.is_file() else set()
    tmpdir = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), dir=out.parent))
    moved: Path | None = None
    committed = False
    try:
        tmp = tmpdir / out.name
        skeleton = Skeleton(model)
        if skeleton.nbytes > EXTERNAL_DATA_THRESHOLD:
            data_name = _free_data_name(out)
            skeleton.write(tmp, data_name)
            _set_mode(tmpdir / data_name)
            moved = out.parent / data_name
            os.replace(tmpdir / data_name, moved)
        else:
            onnx.save(model, str(tmp))
        _set_mode(tmp)
        os.replace(tmp, out)
        committed = True
        for stale in old_data - ({moved} if moved else set()):
            stale.unlink(missing_ok=True)
    finally:
        if moved is not None and not committed:
            moved.unlink(missing_ok=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _temp_prefix(out: Path) -> str:
    """Temporary names beside `out` carry the writer's process id, so a later run can tell a stray (its writer
    killed with SIGKILL, which no handler sees) from a file another run is still writing."""
    return f".{out.name}.qcli-{os.getpid()}."


def remove_strays(out: Path) -> list[Path]:
    """Remove the temporary files and folders earlier runs left beside `out` when killed mid-write, those whose
    process is gone (CI jobs may write into the same folder side by side)."""
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}.qcli-*"):
        pid = p.name[len(out.name) + 7 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _free_data_name(out: Path) -> str:
    name, k = out.name + ".data", 1
    while (out.parent / name).exists():
        name, k = f"{out.name}.{k}.data", k + 1
    return name


def external_data_files(path: Path) -> set[Path]:
    """The external-data files a model file references (read without loading the weights)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = read_structure(path)
    except Exception:
        return set()
    locations = {
        e.value
        for t in _get_all_tensors(model)
        if uses_external_data(t)
        for e in t.external_data
        if e.key == "location"
    }
    return {path.parent / loc for loc in locations}


def _set_mode(path: Path) -> None:
    """Normal permissions (0666 less the umask), as an ordinary open() would give; mkstemp gives 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_for_session(model: ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Save a model where onnxruntime can open it by path: tensors of 1 KB and more in `name`.data, written one
    at a time (any size, no copy of the model in memory; onnxruntime maps the aligned ones)."""
    return Skeleton(model).write(folder / name, name + ".data")


def copy_without(model: ModelProto, names: set[str]) -> ModelProto:
    """A copy of `model` less the main-graph initializers in `names`, whose data is never copied: for a pass
    that replaces those tensors (reading them from `model`) without holding the float weights twice."""
    m = ModelProto()
    copy_fields(m, model, "graph")
    copy_fields(m.graph, model.graph, "initializer")
    for t in model.graph.initializer:
        if t.name not in names:
            m.graph.initializer.add().CopyFrom(t)  # not extend(): that serializes, and fails on a tensor > 2 GB
    return m


def save_with_outputs(model: ModelProto, outputs: dict[str, int], folder: Path, name: str) -> Path:
    """Save `model` with extra graph outputs (name -> element type) for a session, without copying it:
    the outputs are appended, the file written, and the outputs removed again."""
    from onnx import helper

    have = {o.name for o in model.graph.output}
    n = len(model.graph.output)
    model.graph.output.extend(helper.make_tensor_value_info(k, t, None) for k, t in outputs.items() if k not in have)
    try:
        return save_for_session(model, folder, name)
    finally:
        del model.graph.output[n:]


def onnx_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise InputError("the model imports no default-domain (ai.onnx) opset")


def ensure_opset(model: ModelProto, minimum: int, why: str) -> tuple[ModelProto, str | None]:
    """Return the model at opset >= minimum, converted in place if needed, and a note for the report. When
    the converter fails, `model` is left as it was."""
    current = onnx_opset(model)
    if current >= minimum:
        return model, None
    try:
        converted = _convert_light(model, minimum)
    except Exception as e:
        raise InputError(
            f"{why} needs opset {minimum}, the model has opset {current}, and onnx's version converter "
            f"could not upgrade it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "export the model at a newer opset or use --per-tensor"
        ) from e
    return converted, f"opset upgraded {current} -> {minimum} ({why})"


def _convert_light(model: ModelProto, target: int) -> ModelProto:
    """onnx's version converter copies every tensor through its own IR; weights do not matter to it, so it
    converts the skeleton (large initializers declared as graph inputs meanwhile) and the result is grafted
    onto `model` in place: everything from the converted skeleton, the large initializers as they were."""
    light, detached, added = as_inputs(model)
    converted = version_converter.convert_version(light, target)  # raises before `model` is touched
    inputs = [i for i in converted.graph.input if i.name not in added]
    del converted.graph.input[:]
    converted.graph.input.extend(inputs)
    g = model.graph
    for i in reversed(range(len(g.initializer))):  # deleting an element moves no tensor data
        if g.initializer[i].name not in detached:
            del g.initializer[i]
    replace_fields(model, converted, "graph")
    replace_fields(g, converted.graph, "initializer")
    g.initializer.extend(converted.graph.initializer)
    return model


def check_writable(out: Path, need: int = 0) -> None:
    """The output's folder can take a file (made if missing) and has `need` bytes free: checked before any
    work, not after an hour of it."""
    folder = out.parent.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"cannot write {out}: {existing} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(
            f"cannot write {out}: {existing} does not take new files ({e.strerror}); choose another path"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < need:
        raise InputError(
            f"cannot write {out}: it needs up to {_size(need)} (the input model's size and the reports), and "
            f"{existing} has {_size(free)} free; free some space or choose another path"
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def write_text_atomic(path: Path, text: str) -> None:
    with unwritable(path):
        remove_strays(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            _set_mode(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def unwritable(path: Path):
    """A write the system refuses (a full disk, a folder removed or made read-only under a running job) is
    the environment's failure, exit 2, not qcli's: the error names the file and the system's reason."""
    try:
        yield
    except OSError as e:
        remedy = "free some space or choose another path" if e.errno in FULL else "choose another path"
        raise InputError(f"cannot write {path}: {e.strerror or e}; {remedy}") from e


FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the disk (or quota) is full


def float_tensors(model: ModelProto) -> set[str]:
    """Names of float32 tensors in the main graph, by onnx shape inference on the weight-free skeleton."""
    return {name for name, t in tensor_types(model).items() if t == onnx.TensorProto.FLOAT}


def tensor_types(model: ModelProto) -> dict[str, int]:
    """Element type of each main-graph tensor onnx shape inference can type, on the weight-free skeleton (the
    outputs of ops onnx does not know, such as onnxruntime's contrib ops, and what follows them, stay untyped)."""
    skeleton = Skeleton(model).model
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:
        inferred = skeleton
    g = inferred.graph
    out = {t.name: t.data_type for t in g.initializer}
    for v in (*g.value_info, *g.input, *g.output):
        if v.type.tensor_type.elem_type:
            out[v.name] = v.type.tensor_type.elem_type
    return out


def check(model: ModelProto, full: bool) -> None:
    """onnx.checker.check_model (full: with strict shape inference) without serializing the weights; raises
    what it raises (ValidationError, or InferenceError from the full check)."""
    Skeleton(model).check(full)
