"""Time and peak memory to load VGG-16-sized weights and convert them, against the weights file's size.

    .venv/bin/python bench/convert_memory.py [--workdir DIR] [--formats pt,caffemodel,h5,onnx] [--keep]

A VGG-16 caffemodel (138M parameters, about 553 MB) is generated once (random values written straight into the
net's tensors, then `save_caffemodel`). Each measurement then runs in a fresh interpreter, in phases:

  import  python + torch + this project imported (the floor every run pays);
  load    the deploy net built without drawing fillers, the caffemodel copied in (`build_net_for_weights`);
  convert writing the output format (`convert`'s writers, the ONNX check and no onnxruntime run).

Per phase: wall time and the resident-set high-water mark (VmHWM, reset between phases through
/proc/self/clear_refs, so each phase's own peak is seen; ru_maxrss for the whole run). The figure to hold to
"peak <= 2x the file size" is the process's whole peak; its peak above the import floor is given too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _phase(results: dict, name: str, fn):
    resettable = _reset_peak()
    start = time.perf_counter()
    value = fn()
    results[name] = {
        "seconds": time.perf_counter() - start,
        "peak": _status("VmHWM"),
        "rss_after": _status("VmRSS"),
        "peak_is_phase_own": resettable,
    }
    return value


def _vgg_param():
    from pipeline.text.prototxt import read_net

    return read_net(ROOT / "prototxt" / "vgg16.prototxt", {"deploy": True, "deploy_batch": 1})


def child_generate(path: Path) -> dict:
    import torch

    from pipeline.export.deploy import build_net_for_weights
    from pipeline.weights.io import save_caffemodel

    net, _ = build_net_for_weights(_vgg_param(), [], source="vgg16")
    generator = torch.Generator().manual_seed(1701)
    with torch.no_grad():
        for layer in net.layers:
            for blob in layer.blobs:
                blob.normal_(0.0, 0.01, generator=generator)
    save_caffemodel(net, path)
    return {"parameters": sum(b.numel() for layer in net.layers for b in layer.blobs)}


def child_measure(weights: Path, to: str, out: Path) -> dict:
    results: dict = {}

    def imports():
        import torch  # noqa: F401

        import pipeline.export  # noqa: F401

    _phase(results, "import", imports)
    from pipeline.export.convert import ConvertRequest, ConvertResult, _write
    from pipeline.export.deploy import build_net_for_weights, deploy_param, preprocessing

    param = deploy_param(_vgg_param())
    net, _ = _phase(results, "load", lambda: build_net_for_weights(param, [weights], source="vgg16"))
    request = ConvertRequest(model="vgg16", weights=[weights], to=to, out=out, verify=False)
    result = ConvertResult(out=out, net=net, preprocessing=preprocessing(None), ignored=[], missing=[])
    _phase(results, "convert", lambda: _write(request, param, result))
    if to == "onnx":
        from pipeline.export.module import DeployModule
        from pipeline.export.onnx_io import check_onnx, compare_onnx

        def verify():
            check_onnx(out)
            return compare_onnx(DeployModule(net), out).worst

        results["verify_error"] = _phase(results, "verify", verify)
    results["whole_run_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["output_size"] = out.stat().st_size
    return results


def _run_child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the generated caffemodel and outputs go")
    parser.add_argument("--formats", default="safetensors,pt,caffemodel,h5,onnx", help="comma-separated --to formats")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = (
            child_generate(Path(rest[0])) if kind == "generate" else child_measure(Path(rest[0]), kind, Path(rest[1]))
        )
        print(json.dumps(result))
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    weights = workdir / "vgg16.caffemodel"
    if not weights.exists():
        start = time.perf_counter()
        info = _run_child("generate", str(weights))
        print(f"generated {weights} ({info['parameters']:,} parameters) in {time.perf_counter() - start:.1f} s")
    size = weights.stat().st_size
    print(f"weights file: {size / MB:.1f} MiB; target: peak <= 2x = {2 * size / MB:.0f} MiB")
    print(f"{'to':<11}{'phase':<9}{'seconds':>9}{'peak MiB':>10}{'x file':>8}  notes")
    from pipeline.export.convert import FORMATS

    worst = 0.0
    for to in [f for f in args.formats.split(",") if f]:
        out = workdir / ("vgg16_out" + FORMATS[to])
        r = _run_child(to, str(weights), str(out))
        floor = r["import"]["peak"]
        for phase in ("import", "load", "convert", "verify"):
            if phase not in r:
                continue
            p = r[phase]
            note = (
                ""
                if phase == "import"
                else f"above import floor: {(p['peak'] - floor) / MB:.0f} MiB ({(p['peak'] - floor) / size:.2f}x)"
            )
            print(f"{to:<11}{phase:<9}{p['seconds']:>9.2f}{p['peak'] / MB:>10.0f}{p['peak'] / size:>8.2f}  {note}")
        if "verify_error" in r:
            print(
                f"{'':<11}(verify = onnx.checker on the file + onnxruntime run vs PyTorch, optional: not part of the "
                f"conversion's peak; max difference {r['verify_error']:.2g} of the output scale)"
            )
        whole = r["whole_run_peak"] if "verify" not in r else max(r[p]["peak"] for p in ("import", "load", "convert"))
        worst = max(worst, whole / size)
        output = f"output {r['output_size'] / MB:.1f} MiB"
        print(f"{to:<11}{'whole':<9}{'':>9}{whole / MB:>10.0f}{whole / size:>8.2f}  {output}")
        if not args.keep:
            out.unlink(missing_ok=True)
    print(f"worst whole-run peak: {worst:.2f}x the file size ({'within' if worst <= 2 else 'OVER'} the 2x target)")
    if not args.keep:
        weights.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
