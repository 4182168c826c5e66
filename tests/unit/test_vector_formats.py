"""SteeringVector validation, and its three file formats read back by independent readers.

References: safetensors' ``safe_open``, the ``gguf`` package's ``GGUFReader`` (llama.cpp's own
Python reader) and ``numpy.load(allow_pickle=False)``; comparisons are exact.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from safetensors import safe_open
from safetensors.torch import save_file

import auralens.interp
from auralens.interp.arch import TABLES, Architecture
from auralens.interp.errors import ConfigError, VectorFileError
from auralens.steering.formats import (
    convert,
    detect_format,
    export,
    gguf_layer_index,
    load_gguf,
    load_npz,
    load_safetensors,
    load_vector,
    save_gguf,
    save_npz,
    save_safetensors,
)
from auralens.steering.vector import SteeringVector, fingerprint

D_MODEL, N_LAYERS, N_HEADS, HEAD_DIM = 32, 6, 4, 8
LAYERS = (1, 3, 5)
FINGERPRINT = fingerprint({"dataset": "cafe", "split": "train", "n_items": 8, "seed": 0})
TABLE = TABLES["Qwen2AudioForConditionalGeneration"]


def make_vector(tensor_dtype: torch.dtype = torch.float32, /, **overrides) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    fields = dict(
        directions={L: torch.randn(D_MODEL, generator=g, dtype=torch.float64).to(tensor_dtype) for L in LAYERS},
        model_id="local/micro",
        architecture="qwen2_audio",
        d_model=D_MODEL,
        n_layers=N_LAYERS,
        method="audio_minus_silence",
        data_fingerprint=FINGERPRINT,
        site="resid_post",
        default_alpha=2.5,
        heads=[(3, 1), (5, 0)],
        extra={"position": "final_prompt", "items": [1, 2, 3], "nested": {"a": 0.125}},
    )
    fields.update(overrides)
    return SteeringVector(**fields)


def make_arch(**changes) -> Architecture:
    fields = dict(
        table=TABLE,
        n_layers=N_LAYERS,
        n_heads=N_HEADS,
        n_kv_heads=2,
        head_dim=HEAD_DIM,
        d_model=D_MODEL,
        vocab_size=100,
        audio_token_id=7,
        n_audio_layers=2,
        d_audio=16,
    )
    fields.update(changes)
    return Architecture(**fields)


def expected_metadata(vec: SteeringVector) -> dict:
    return {
        "model_id": "local/micro",
        "architecture": "qwen2_audio",
        "site": "lm.blocks.{L}.hook_resid_post",
        "d_model": D_MODEL,
        "n_layers": N_LAYERS,
        "dtype": vec.dtype_name,
        "method": "audio_minus_silence",
        "default_alpha": 2.5,
        "data_fingerprint": FINGERPRINT,
        "auralens_version": auralens.interp.__version__,
        "heads": [[3, 1], [5, 0]],
        "extra": {"position": "final_prompt", "items": [1, 2, 3], "nested": {"a": 0.125}},
        "layers": list(LAYERS),
    }


def gguf_fields(reader: GGUFReader) -> dict[str, tuple[list, object]]:
    return {name: (list(f.types), f.contents()) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def rewrite_gguf(src: Path, dst: Path, *, arch: str = "controlvector", tensors=None, drop=(), kv=None) -> Path:
    """Copy a GGUF file key by key (optionally changing keys/tensors) with the gguf writer."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop:
            continue
        writer.add_key_value(name, f.contents(), f.types[0])
    for name, (value, vtype) in (kv or {}).items():
        writer.add_key_value(name, value, vtype)
    if tensors is None:
        tensors = {t.name: np.array(t.data) for t in reader.tensors}
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# --- the dataclass ------------------------------------------------------------------------
def test_vector_fields_and_views():
    vec = make_vector()
    assert vec.layers == LAYERS
    assert vec.site == "lm.blocks.{L}.hook_resid_post" and vec.hook == "hook_resid_post"
    assert vec.site_for(3) == "lm.blocks.3.hook_resid_post"
    assert vec.dtype == torch.float32 and vec.width == D_MODEL
    assert vec.heads == ((3, 1), (5, 0))
    assert vec.metadata() == expected_metadata(vec)
    assert vec.stacked().shape == (len(LAYERS), D_MODEL)


def test_stacked_layout_is_equivalent_to_dict():
    full = torch.randn(N_LAYERS, D_MODEL, generator=torch.Generator().manual_seed(1))
    vec = make_vector(directions=full)
    assert vec.layers == tuple(range(N_LAYERS))
    assert all(torch.equal(vec.directions[L], full[L]) for L in range(N_LAYERS))
    as_dict = make_vector(directions={L: full[L] for L in range(N_LAYERS)})
    assert vec.equals(as_dict)


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(directions={1: torch.zeros(D_MODEL + 1)}), "width d_model=32"),
        (dict(directions={N_LAYERS: torch.zeros(D_MODEL)}), "out of range"),
        (dict(directions={1: torch.full((D_MODEL,), float("nan"))}), "finite"),
        (dict(directions={}), "at least one"),
        (dict(directions=torch.zeros(N_LAYERS - 1, D_MODEL)), "stacked"),
        (dict(data_fingerprint="abc"), "sha256"),
        (dict(site="lm.blocks.{L}.mlp"), "site"),
        (dict(site="lm.blocks.3.hook_resid_post"), "concrete site"),
        (dict(heads=[(N_LAYERS, 0)]), "heads entry"),
        (dict(heads=[(1, 0), (1, 0)]), "twice"),
        (dict(extra={"bad": float("nan")}), "JSON"),
        (dict(default_alpha=float("inf")), "finite"),
        (dict(method="two words"), "method"),
        (dict(d_model=0), "d_model"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_vector_validation(change, needle):
    with pytest.raises(ConfigError, match=needle):
        make_vector(**change)


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(directions={1: torch.zeros(2, D_MODEL)}), "1-D"),
        (dict(directions={1: torch.zeros(D_MODEL, dtype=torch.int64)}), "float"),
    ],
)
def test_vector_validation_of_malformed_tensors(change, needle, unchecked_shapes):  # the vector's own checks
    with pytest.raises(ConfigError, match=needle):
        make_vector(**change)


def test_concrete_site_with_its_one_layer_is_accepted():
    vec = make_vector(directions={3: torch.ones(D_MODEL)}, site="lm.blocks.3.hook_resid_post", heads=[])
    assert vec.site == "lm.blocks.{L}.hook_resid_post" and vec.layers == (3,)


def test_scaled_normalized_to():
    vec = make_vector()
    s = vec.scaled(-2.0)
    assert all(torch.equal(s.directions[L], vec.directions[L] * -2.0) for L in LAYERS)
    assert s.metadata() == vec.metadata()
    n = vec.normalized()
    for L in LAYERS:
        assert torch.allclose(torch.linalg.vector_norm(n.directions[L]), torch.tensor(1.0))
        assert torch.allclose(n.directions[L] * torch.linalg.vector_norm(vec.directions[L]), vec.directions[L])
    h = vec.to(torch.bfloat16)
    assert h.dtype == torch.bfloat16 and h.dtype_name == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in h.directions.values())
    assert h.to("float32").to("cpu").dtype == torch.float32
    with pytest.raises(ConfigError, match="zero norm"):
        make_vector(directions={1: torch.zeros(D_MODEL)}, heads=[]).normalized()
    with pytest.raises(ConfigError, match="alpha"):
        vec.scaled(float("nan"))


# --- check_compatible ---------------------------------------------------------------------
def test_check_compatible_accepts_matching_model():
    vec = make_vector()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vec.check_compatible(make_arch(), "local/micro") is vec
    # the model class is accepted in place of the table name
    assert make_vector(architecture=TABLE.model_class).check_compatible(make_arch()) is not None


@pytest.mark.parametrize(
    "vec_changes, arch_changes, expected, found",
    [
        (dict(architecture="audioflamingo3"), {}, "'qwen2_audio'", "'audioflamingo3'"),
        ({}, dict(d_model=64), "expected 64", "found 32"),
        ({}, dict(n_layers=4), "0..3", "[5]"),
        ({}, dict(n_heads=1), "6 layers x 1 heads", "[(3, 1)]"),
    ],
)
def test_check_compatible_errors(tmp_path, vec_changes, arch_changes, expected, found):
    vec = make_vector(**vec_changes)
    path = save_safetensors(vec, tmp_path / "v.safetensors")
    loaded = load_vector(path)
    if "d_model" in arch_changes:
        arch_changes["head_dim"] = arch_changes["d_model"] // N_HEADS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VectorFileError) as err:
            loaded.check_compatible(make_arch(**arch_changes), "Qwen/Qwen2-Audio-7B-Instruct")
    msg = str(err.value)
    assert str(path) in msg and "local/micro" in msg and "Qwen/Qwen2-Audio-7B-Instruct" in msg
    assert expected in msg and found in msg


def test_check_compatible_model_id_mismatch_warns_or_raises():
    vec = make_vector()
    with pytest.warns(UserWarning, match="fitted on 'local/micro'"):
        vec.check_compatible(make_arch(), "mispeech/r1-aqa")
    with pytest.raises(VectorFileError, match="expected model id 'local/micro', found 'mispeech/r1-aqa'"):
        vec.check_compatible(make_arch(), "mispeech/r1-aqa", strict_model_id=True)


# --- safetensors --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("stacked", [False, True])
def test_safetensors_round_trip(tmp_path, dtype, stacked):
    vec = make_vector(dtype)
    path = save_safetensors(vec, tmp_path / "v.safetensors", stacked=stacked)
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
        if stacked:
            assert set(f.keys()) == {"directions"}
            stack = f.get_tensor("directions")
            assert stack.dtype == dtype and torch.equal(stack, vec.stacked())
        else:
            assert set(f.keys()) == {f"direction.{L}" for L in LAYERS}
            for L in LAYERS:
                t = f.get_tensor(f"direction.{L}")
                assert t.dtype == dtype and t.shape == (D_MODEL,)
                assert torch.equal(t, vec.directions[L])
    assert all(isinstance(v, str) for v in header.values())
    assert header["auralens.format"] == "steering_vector" and header["auralens.format_version"] == "1"
    assert header["layout"] == ("stacked" if stacked else "per_layer")
    meta = expected_metadata(vec)
    for key in ("model_id", "architecture", "site", "dtype", "method", "data_fingerprint", "auralens_version"):
        assert header[key] == meta[key]
    for key in ("d_model", "n_layers", "default_alpha", "heads", "extra", "layers"):
        assert json.loads(header[key]) == meta[key]
    loaded = load_vector(path)
    assert loaded.equals(vec) and loaded.dtype == dtype
    assert loaded.source == str(path)


# --- GGUF ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gguf_follows_llama_cpp_control_vector_convention(tmp_path, dtype):
    vec = make_vector(dtype)
    path = save_gguf(vec, tmp_path / "v.gguf", model_hint="qwen2")
    reader = GGUFReader(path)
    fields = gguf_fields(reader)
    assert fields["general.architecture"] == ([GGUFValueType.STRING], "controlvector")
    assert fields["controlvector.model_hint"] == ([GGUFValueType.STRING], "qwen2")
    assert fields["controlvector.layer_count"] == ([GGUFValueType.UINT32], len(LAYERS))
    # everything else is namespaced so llama.cpp ignores it
    assert {k for k in fields if not k.startswith("auralens.")} == {
        "general.architecture",
        "controlvector.model_hint",
        "controlvector.layer_count",
    }
    assert fields["auralens.default_alpha"] == ([GGUFValueType.FLOAT64], 2.5)
    assert fields["auralens.d_model"] == ([GGUFValueType.UINT32], D_MODEL)
    assert fields["auralens.dtype"] == ([GGUFValueType.STRING], vec.dtype_name)
    assert json.loads(fields["auralens.heads"][1]) == [[3, 1], [5, 0]]
    # resid_post of 0-based decoder layer L is llama.cpp's direction.L
    assert [t.name for t in reader.tensors] == [f"direction.{L}" for L in LAYERS]
    for t in reader.tensors:
        L = int(t.name.split(".")[1])
        assert t.tensor_type == GGMLQuantizationType.F32
        assert t.shape.tolist() == [D_MODEL] and t.data.dtype == np.float32
        assert np.array_equal(t.data, vec.directions[L].to(torch.float32).numpy())
    del reader
    loaded = load_vector(path)
    assert loaded.equals(vec) and loaded.dtype == dtype


def _llama_cpp_added_vectors(path: Path, n_layer: int, strength: float) -> dict[int, np.ndarray]:
    """What llama.cpp adds to l_out of each 0-based block il, restated from its C++ source.

    common_control_vector_load_one: N from 'direction.N', N == 0 rejected, stored at
    data[(N-1)*n_embd]; llama_adapter_cvec::apply: tensors[il] <- data[(il-1)*n_embd] for
    il in 1..n_layer-1; graph builders: l_out(il) = block(il) + tensors[il].
    """
    reader = GGUFReader(path)
    n_embd, data = -1, np.zeros(0, dtype=np.float32)
    for t in reader.tensors:
        prefix, _, idx = t.name.partition(".")
        assert prefix == "direction" and int(idx) > 0
        assert t.tensor_type == GGMLQuantizationType.F32 and len(t.shape) == 1
        n_embd = int(t.n_elements)
        layer_idx = int(idx)
        if data.size < n_embd * layer_idx:
            data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, dtype=np.float32)])
        data[n_embd * (layer_idx - 1) : n_embd * layer_idx] += np.asarray(t.data) * np.float32(strength)
    added = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)
        if off + n_embd <= data.size:
            added[il] = data[off : off + n_embd].copy()
    return added


@pytest.mark.parametrize("site, shift", [("resid_post", 0), ("resid_pre", 1)])
def test_gguf_layer_mapping_matches_llama_cpp_loader(tmp_path, site, shift):
    layers = (2, 4, 5)
    vec = make_vector(directions={L: torch.full((D_MODEL,), float(L)) for L in layers}, site=site, heads=[])
    path = save_gguf(vec, tmp_path / "v.gguf")
    added = _llama_cpp_added_vectors(path, N_LAYERS, strength=1.0)
    for L in layers:
        # resid_post L = output of block L; resid_pre L = output of block L - 1
        block = L - shift
        assert gguf_layer_index(vec.site, L) == block
        assert np.array_equal(added[block], vec.directions[L].numpy())
    assert all(not added[il].any() for il in added if il + shift not in layers)
    assert load_gguf(path).equals(vec)


def test_gguf_refuses_what_llama_cpp_cannot_apply(tmp_path):
    out = tmp_path / "v.gguf"
    with pytest.raises(VectorFileError, match="direction.0"):
        save_gguf(make_vector(directions={0: torch.ones(D_MODEL)}, heads=[]), out)
    with pytest.raises(VectorFileError, match="direction.0"):
        save_gguf(make_vector(directions={1: torch.ones(D_MODEL)}, heads=[], site="resid_pre"), out)
    z = make_vector(directions={1: torch.ones(N_HEADS * HEAD_DIM)}, heads=[], site="attn.hook_z")
    with pytest.raises(VectorFileError, match="layer outputs"):
        save_gguf(z, out)
    wide = make_vector(directions={1: torch.full((D_MODEL,), 1 / 3, dtype=torch.float64)}, heads=[])
    with pytest.raises(VectorFileError, match="float32"):
        save_gguf(wide, out)
    assert not out.exists() and not list(tmp_path.iterdir())
    exact = make_vector(directions={1: torch.full((D_MODEL,), 0.5, dtype=torch.float64)}, heads=[])
    assert load_vector(save_gguf(exact, out)).equals(exact)


def test_gguf_written_by_another_tool_is_imported(tmp_path):
    """A repeng-style file (no auralens keys) loads with the loader's layer meaning."""
    path = tmp_path / "repeng.gguf"
    writer = GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "qwen2")
    writer.add_uint32("controlvector.layer_count", 2)
    arrays = {n: np.arange(D_MODEL, dtype=np.float32) * n for n in (2, 3)}
    for n, arr in arrays.items():
        writer.add_tensor(f"direction.{n}", arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vec = load_vector(path)
    assert vec.layers == (2, 3) and vec.site == "lm.blocks.{L}.hook_resid_post"
    assert vec.architecture == "qwen2" and vec.method == "llama_cpp_import"
    assert all(np.array_equal(vec.directions[n].numpy(), arrays[n]) for n in arrays)
    with pytest.raises(VectorFileError, match="architecture"):
        vec.check_compatible(make_arch())


# --- npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_npz_round_trip(tmp_path, dtype):
    vec = make_vector(dtype)
    path = save_npz(vec, tmp_path / "v.npz")
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"metadata"} | {f"direction.{L}" for L in LAYERS}
        meta = json.loads(str(npz["metadata"][0]))
        assert npz["metadata"].dtype.kind == "U" and npz["metadata"].shape == (1,)
        for L in LAYERS:
            arr = npz[f"direction.{L}"]
            assert arr.dtype == (np.float32 if dtype == torch.bfloat16 else vec.directions[L].numpy().dtype)
            assert np.array_equal(arr, vec.directions[L].to(torch.float32 if dtype == torch.bfloat16 else dtype).numpy())
    assert meta.pop("auralens.format") == "steering_vector" and meta.pop("auralens.format_version") == 1
    assert meta == expected_metadata(vec)
    loaded = load_vector(path)
    assert loaded.equals(vec) and loaded.dtype == dtype


# --- conversion and dispatch --------------------------------------------------------------
def test_cross_format_conversion_is_lossless_for_fp32(tmp_path):
    vec = make_vector(torch.float32)
    a = export(vec, tmp_path / "a.safetensors")
    b = convert(a, tmp_path / "b.gguf")
    c = convert(b, tmp_path / "c.npz")
    d = convert(c, tmp_path / "d.safetensors")
    for p in (a, b, c, d):
        loaded = load_vector(p)
        assert loaded.equals(vec), p
    # the same bytes through every hop
    with safe_open(a, framework="pt") as fa, safe_open(d, framework="pt") as fd:
        assert fa.metadata() == fd.metadata()
        assert all(torch.equal(fa.get_tensor(k), fd.get_tensor(k)) for k in fa.keys())


def test_export_and_detection(tmp_path):
    vec = make_vector()
    for fmt, ext in (("safetensors", ".safetensors"), ("gguf", ".gguf"), ("npz", ".npz")):
        p = export(vec, tmp_path / f"v{ext}")
        assert detect_format(p) == fmt
        # content wins over a misleading name
        q = p.rename(tmp_path / f"{fmt}.bin")
        assert detect_format(q) == fmt and load_vector(q).equals(vec)
        assert export(vec, tmp_path / f"w.{fmt}.vec", fmt).exists()
    with pytest.raises(ConfigError, match=r"\.gguf"):
        export(vec, tmp_path / "v.npz", "gguf")
    with pytest.raises(ConfigError, match="extension"):
        export(vec, tmp_path / "v.bin")
    with pytest.raises(ConfigError, match="format"):
        export(vec, tmp_path / "v.bin", "pickle")


# --- damaged files ------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".safetensors", ".gguf", ".npz"])
@pytest.mark.parametrize("cut", ["half", "tail", "head"])
def test_truncated_files_name_the_file(tmp_path, ext, cut):
    path = export(make_vector(), tmp_path / f"v{ext}")
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "tail": len(data) - 7, "head": 12}[cut]
    path.write_bytes(data[:keep])
    with pytest.raises(VectorFileError, match=str(path)):
        load_vector(path)


@pytest.mark.parametrize("content", [b"", b"not a vector at all", b"\x00" * 64])
def test_garbage_and_missing_files(tmp_path, content):
    path = tmp_path / "v.safetensors"
    path.write_bytes(content)
    with pytest.raises(VectorFileError, match=str(path)):
        load_vector(path)
    with pytest.raises(VectorFileError, match="nope.gguf"):
        load_vector(tmp_path / "nope.gguf")


def test_safetensors_validation(tmp_path):
    vec = make_vector()
    good = save_safetensors(vec, tmp_path / "good.safetensors")
    with safe_open(good, framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def variant(name, tensors=tensors, header=header):
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors, p, metadata=header)
        return p

    cases = {
        "missing": (variant("missing", {k: v for k, v in tensors.items() if k != "direction.3"}), r"missing tensors \['direction.3'\]"),
        "extra": (variant("extra", {**tensors, "direction.4": torch.zeros(D_MODEL)}), "unexpected tensors"),
        "shape": (variant("shape", {**tensors, "direction.3": torch.zeros(D_MODEL + 1)}), r"expected shape \[32\]"),
        "nan": (variant("nan", {**tensors, "direction.3": torch.full((D_MODEL,), float("nan"))}), "finite"),
        "dtype": (variant("dtype", {**tensors, "direction.3": torch.zeros(D_MODEL, dtype=torch.float16)}), "dtype"),
        "no_meta": (variant("no_meta", header={}), "auralens.format"),
        "bad_json": (variant("bad_json", header={**header, "heads": "[[3,"}), "heads"),
        "no_key": (variant("no_key", header={k: v for k, v in header.items() if k != "model_id"}), "model_id"),
        "arch_layer": (variant("arch_layer", header={**header, "n_layers": "4"}), "out of range"),
    }
    for name, (path, needle) in cases.items():
        with pytest.raises(VectorFileError, match=needle) as err:
            load_safetensors(path)
        assert str(path) in str(err.value), name


def test_gguf_validation(tmp_path):
    vec = make_vector()
    good = save_gguf(vec, tmp_path / "good.gguf")
    reader = GGUFReader(good)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    del reader
    u32 = GGUFValueType.UINT32
    cases = {
        "arch": (dict(arch="llama"), "expected 'controlvector', found 'llama'"),
        "missing": (dict(tensors={k: v for k, v in tensors.items() if k != "direction.3"}), "layer_count"),
        "zero": (dict(tensors={**tensors, "direction.0": tensors["direction.1"]}, kv={"controlvector.layer_count": (4, u32)}), "N >= 1"),
        "name": (dict(tensors={**tensors, "bias.1": tensors["direction.1"]}, kv={"controlvector.layer_count": (4, u32)}), "bias.1"),
        "f16": (dict(tensors={**tensors, "direction.3": tensors["direction.3"].astype(np.float16)}), "F32"),
        "2d": (dict(tensors={**tensors, "direction.3": np.zeros((2, D_MODEL), np.float32)}), "1-D"),
        "width": (dict(tensors={**tensors, "direction.3": np.zeros(D_MODEL + 1, np.float32)}), "elements"),
        "nan": (dict(tensors={**tensors, "direction.3": np.full(D_MODEL, np.nan, np.float32)}), "finite"),
        "d_model": (dict(kv={"auralens.d_model": (D_MODEL * 2, u32)}), r"expected shape \[64\]"),
        "no_site": (dict(drop=("auralens.site",)), "auralens.site"),
        "alpha_type": (dict(kv={"auralens.default_alpha": (2.5, GGUFValueType.FLOAT32)}), "FLOAT64"),
    }
    for name, (changes, needle) in cases.items():
        path = rewrite_gguf(good, tmp_path / f"{name}.gguf", **changes)
        with pytest.raises(VectorFileError, match=needle) as err:
            load_gguf(path)
        assert str(path) in str(err.value), name


def test_npz_validation(tmp_path):
    vec = make_vector()
    good = save_npz(vec, tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["metadata"][0]))

    def variant(name, **arrs):
        p = tmp_path / f"{name}.npz"
        with open(p, "wb") as fh:
            np.savez(fh, **arrs)
        return p

    cases = {
        "missing": (variant("missing", **{k: v for k, v in arrays.items() if k != "direction.5"}), "direction.5"),
        "no_meta": (variant("no_meta", **{k: v for k, v in arrays.items() if k != "metadata"}), "'metadata' missing"),
        "shape": (variant("shape", **{**arrays, "direction.5": np.zeros(3, np.float32)}), r"expected shape \[32\]"),
        "nan": (variant("nan", **{**arrays, "direction.5": np.full(D_MODEL, np.inf, np.float32)}), "finite"),
        "int": (variant("int", **{**arrays, "direction.5": np.zeros(D_MODEL, np.int32)}), "float array"),
        "pickle": (variant("pickle", **{**arrays, "metadata": np.array([meta], dtype=object)}), "readable npz"),
        "version": (variant("version", **{**arrays, "metadata": np.array([json.dumps({**meta, "auralens.format_version": 9})])}), "format_version"),
        "types": (variant("types", **{**arrays, "metadata": np.array([json.dumps({**meta, "d_model": "32"})])}), "integer"),
    }
    for name, (path, needle) in cases.items():
        with pytest.raises(VectorFileError, match=needle) as err:
            load_npz(path)
        assert str(path) in str(err.value), name
    # a zip that is not an npz of ours
    bad = tmp_path / "zip.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(VectorFileError, match=str(bad)):
        load_vector(bad)

