"""`make interop`: llama.cpp applies an auralens control vector as transformers does.

On smol-audio's decoder (SmolLM2-135M, llama.cpp architecture ``llama``): the packaged Q4_1 GGUF
is rewritten with every tensor dequantised to F32 by the ``gguf`` library (the same
dequantisation transformers applies when it loads ``gguf_file=``, so both sides hold the same
weights; llama.cpp on Q4_1 would quantise activations to Q8 and differ by ~1e-2), a vector is
fitted by ``auralens steer fit`` (n small) and exported with ``auralens export --format gguf``,
and llama.cpp's logits at every prompt position (``auralens-logits``: llama.cpp's own argument
parser and control-vector loader, ``-fa off -ctk f32 -ctv f32``) are compared with
transformers' under ``apply_vector(positions="all")`` on the same token ids.

Usage: python scripts/interop/check.py BIN WORKDIR   (prints one JSON report; exit 1 on failure)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOL = 1e-3  # max |llama.cpp - transformers| on logits, float32 on both sides
PROMPT = "The quick brown fox jumps over the lazy dog. In the morning, the farmer"


def f32_gguf(src: Path, dst: Path) -> None:
    import gguf

    if dst.is_file():
        return
    r = gguf.GGUFReader(src)
    arch = r.get_field("general.architecture").contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data.reshape([int(x) for x in reversed(t.shape)]) if data.ndim == 1 and len(t.shape) > 1 else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_logits(binary: Path, model: Path, work: Path, args: list[str], gen: int = 0):
    out = work / "logits.bin"
    cmd = [str(binary), "-m", str(model), "-p", PROMPT, "-c", "256", "-t", "2", "-fa", "off", "-ctk", "f32",
           "-ctv", "f32", *args]
    env = {"AURALENS_LOGITS_OUT": str(out), "AURALENS_GEN": str(gen), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"auralens-logits failed ({' '.join(args)}): {res.stderr[-2000:]}")
    raw = out.read_bytes()
    n_prompt, n_gen, n_vocab = np.frombuffer(raw[:12], dtype=np.int32)
    ids = np.frombuffer(raw[12:12 + 4 * (n_prompt + n_gen)], dtype=np.int32)
    rows = np.frombuffer(raw[12 + 4 * (n_prompt + n_gen):], dtype=np.float32).reshape(-1, n_vocab)
    return ids[:n_prompt], ids[n_prompt:], rows


def main() -> int:
    import torch

    from auralens.interp.loading import load_model
    from auralens.interp.smol.parts import GGUF_FILE, gguf_folder
    from auralens.steering.apply import apply_vector
    from auralens.steering.formats import export_report
    from auralens.steering.stage_fit import stage_steer_fit

    binary, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.time()
    f32 = work / "SmolLM2-135M-Instruct.F32.gguf"
    f32_gguf(gguf_folder() / GGUF_FILE, f32)
    lm = load_model("smol-audio", dtype="float32")
    vec = stage_steer_fit(model="smol-audio", data="cafe", n=4, seed=0, layers=(5, 15, 25), batch_size=4,
                          out_vector=work / "vec.safetensors", lm=lm)
    cli = Path(sys.executable).parent / "auralens"  # the command a user runs
    res = subprocess.run([str(cli), "export", str(work / "vec.safetensors"), "--format", "gguf", "--out",
                          str(work / "vec.gguf"), "--json"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"auralens export failed: {res.stderr[-2000:]}")
    report = json.loads(res.stdout)
    export_warning = res.stderr.strip()
    one = vec.__class__(**{k: getattr(vec, k) for k in ("model_id", "architecture", "d_model", "n_layers", "method",
                                                       "data_fingerprint", "site", "extra")},
                        directions={15: vec.directions[15]})
    export_report(one, work / "one.gguf", "gguf")
    n_vocab_base = None

    def hf(ids, alpha=None, v=vec, layers=None):
        x = torch.tensor(ids, dtype=torch.long)[None]
        with torch.no_grad():
            if alpha is None:
                return lm.model(input_ids=x).logits[0].float().numpy()
            with apply_vector(lm, v, alpha=alpha, positions="all", layers=layers):
                return lm.model(input_ids=x).logits[0].float().numpy()

    cases = {
        "none": ([], None, vec, None),
        "single layer (direction.15)": (["--control-vector", str(work / "one.gguf")], 1.0, one, None),
        "three layers (5, 15, 25)": (["--control-vector", str(work / "vec.gguf")], 1.0, vec, None),
        "scaled 3.0": (["--control-vector-scaled", f"{work / 'vec.gguf'}:3.0"], 3.0, vec, None),
        "layer range 10 20": (["--control-vector-scaled", f"{work / 'vec.gguf'}:3.0",
                               "--control-vector-layer-range", "10", "20"], 3.0, vec, [15]),
    }
    out = {"model": "smol-audio decoder (SmolLM2-135M, F32 GGUF)", "tolerance": TOL, "model_hint": report["model_hint"],
           "layer_count": report["layer_count"], "directions": report["directions"], "cases": {}}
    out["export_warning"] = export_warning
    ok = report["model_hint"] == "llama" and report["layer_count"] == 3
    wheel = Path(os.environ.get("AURALENS_CACHE") or Path.home() / ".cache" / "auralens") / "repeng" / \
        "repeng-0.4.0-py3-none-any.whl"
    if wheel.is_file():  # repeng's ControlVector.import_gguf reads the file as its own
        sys.path.insert(0, str(wheel))
        if not hasattr(np, "float_"):  # repeng 0.4.0 annotates with np.float_, removed in numpy 2
            np.float_ = np.float64  # type: ignore[attr-defined]
        from repeng import ControlVector

        cv = ControlVector.import_gguf(str(work / "vec.gguf"))
        same = sorted(cv.directions) == [5, 15, 25] and all(
            np.array_equal(np.asarray(cv.directions[L]), vec.directions[L].numpy()) for L in (5, 15, 25))
        out["repeng_import_gguf"] = {"model_type": cv.model_type, "layers": sorted(cv.directions), "equal": bool(same)}
        ok &= same and cv.model_type == "llama"
    plain = None
    for name, (args, alpha, v, layers) in cases.items():
        ids, _, rows = llama_logits(binary, f32, work, args)
        n_vocab_base = rows.shape[1]
        ref = hf(ids.tolist(), alpha, v, layers)[:, :n_vocab_base]
        if plain is None:
            plain = ref
        diff = float(np.abs(rows - ref).max())
        case = {"max_abs_diff": diff, "n_tokens": int(len(ids)), "steering_effect": float(np.abs(ref - plain).max())}
        if alpha is not None:  # the same vector one block earlier: what a wrong index convention would give
            shifted = v.__class__(**{**{k: getattr(v, k) for k in ("model_id", "architecture", "d_model", "n_layers",
                                                                      "method", "data_fingerprint", "site", "extra")},
                                     "directions": {L - 1: d for L, d in v.directions.items()
                                                    if layers is None or L in layers}})
            case["off_by_one_diff"] = float(np.abs(rows - hf(ids.tolist(), alpha, shifted)[:, :n_vocab_base]).max())
            ok &= case["off_by_one_diff"] > 100 * TOL and case["steering_effect"] > 100 * TOL
        ok &= diff <= TOL
        out["cases"][name] = case
    # steered greedy decoding, 15 tokens
    ids, gen, _ = llama_logits(binary, f32, work, ["--control-vector-scaled", f"{work / 'vec.gguf'}:3.0"], gen=15)
    x = torch.tensor(ids.tolist(), dtype=torch.long)[None]
    with torch.no_grad(), apply_vector(lm, vec, alpha=3.0, positions="all"):
        g = lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=15, do_sample=False,
                              min_new_tokens=15, pad_token_id=lm.tokenizer.pad_token_id)[0, x.shape[1]:].tolist()
    agree = sum(int(a == b) for a, b in zip(gen.tolist(), g))
    out["greedy_15_tokens_agree"] = agree
    ok &= agree == 15
    out["seconds"] = round(time.time() - t0, 1)
    out["passed"] = bool(ok)
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
