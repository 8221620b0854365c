"""Soak test of the scoring daemon: N frames from a generated video through ScoringService, RSS sampled,
and a hot swap under load (a truncated artefact dropped into the model folder, then a good one flashed).

    nice -n 15 .venv/bin/python bench/soak_daemon.py --frames 10000 --fps 60

Prints frames, drops, errors, RSS growth after warm-up, latency p50/p99, and which model scored which
frames (one clean switch expected). Needs the build extra (to make a random-weights artefact once) and
opencv-python-headless (to write and read the video). Exit status 1 if an acceptance check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from adtk.runtime.artefact import INTEGRITY_KEY, MANIFEST_KEY, read_artefact, seal
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sources import VideoSource
from adtk.runtime.flash import flash

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * PAGE_BYTES / 1e6


def build_artefacts(workdir: Path, model_size_px: int) -> tuple[Path, Path]:
    """A random-weights PatchCore artefact on the example data (cached), and a re-sealed variant of it."""
    first, second = workdir / "v1.onnx", workdir / "v2.onnx"
    if not first.exists():
        from adtk.toolkit.build import BuildConfig, build
        from adtk.toolkit.demo import make_example_dataset

        index = make_example_dataset(workdir / "data", seed=0, num_train=16, num_test_good=2, num_test_defect=2,
                                     image_size_px=96)
        build(BuildConfig(data=index.root, out=first, method="patchcore", method_params={"coreset_ratio": 0.25},
                          random_weights=True, image_size_px=model_size_px, calib_fraction=0.25),
              log=lambda message: None, index=index)
    if not second.exists():
        import onnx

        model = onnx.load_from_string(first.read_bytes())
        props = [(p.key, p.value) for p in model.metadata_props if p.key != INTEGRITY_KEY]
        del model.metadata_props[:]
        for key, value in props:
            entry = model.metadata_props.add()
            entry.key = key
            entry.value = json.dumps({**json.loads(value), "note": "soak v2"}) if key == MANIFEST_KEY else value
        second.write_bytes(seal(model.SerializeToString()))
    return first, second


def make_video(path: Path, num_frames: int, width: int, height: int) -> None:
    import cv2

    if path.exists():
        return
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frame = background.copy()
        x = (i * 3) % (width - 40)
        frame[height // 3: height // 3 + 30, x: x + 40] = (20, 20, 230)  # a moving "part"
        writer.write(frame)
    writer.release()


def checkpoints(samples: list[tuple[int, float]], frames: int) -> list[tuple[int, float]]:
    """The first RSS sample at or after every tenth of `frames`."""
    picked = []
    for tenth in range(1, 11):
        after = [(count, rss) for count, rss in samples if count >= frames * tenth // 10]
        picked.append(after[0] if after else samples[-1])
    return picked


class LimitedSource:
    """The first `limit` frames of another source (the video loops until then)."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit = inner, limit
        self.live, self.name = inner.live, inner.name

    def frames(self, counter, stop, on_reopen=None):
        for count, frame in enumerate(self.inner.frames(counter, stop, on_reopen), start=1):
            yield frame
            if count >= self.limit:
                return


class RecordingSink:
    """Keeps per-frame latency and model in preallocated arrays; triggers the swap steps."""

    needs_pixels = False
    name = "recording"

    def __init__(self, capacity: int, on_count):
        self.latency_ms = np.zeros(capacity, np.float64)
        self.inference_ms = np.zeros(capacity, np.float64)
        self.model_index = np.full(capacity, -1, np.int8)
        self.models: list[str] = []
        self.count, self.on_count = 0, on_count

    def write(self, result) -> None:
        if result.model_sha256 not in self.models:
            self.models.append(result.model_sha256)
        i = self.count
        self.latency_ms[i], self.inference_ms[i] = result.latency_ms, result.inference_ms
        self.model_index[i] = self.models.index(result.model_sha256)
        self.count += 1
        self.on_count(self.count)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--fps", type=float, default=60.0, help="camera rate the video is replayed at (0: max)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--model-size", type=int, default=64)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/adtk-soak"))
    parser.add_argument("--swap-frames", type=int, default=3000, help="frames of the hot-swap phase after the soak")
    parser.add_argument("--swaps", type=int, default=3, help="hot swaps in that phase (v2, v1, v2, ...)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        build_artefacts(args.workdir, args.model_size)
        return 0
    # Built in a child process: torch must not sit in this process's RSS, as it does not on a device.
    subprocess.run([sys.executable, __file__, "--build-only", "--workdir", str(args.workdir), "--model-size",
                    str(args.model_size)], check=True)
    v1, v2 = args.workdir / "v1.onnx", args.workdir / "v2.onnx"
    video = args.workdir / f"clip_{args.width}x{args.height}.avi"
    make_video(video, 500, args.width, args.height)
    models = args.workdir / "models"
    models.mkdir(exist_ok=True)
    for stale in models.iterdir():
        stale.unlink()
    flash(v1, [str(models)])

    # Phase 1 (frames 1..N): the soak, nothing else happening; RSS growth is measured from warm-up to N.
    # Phase 2 (N+1..N+M): hot swaps under load: a truncated artefact dropped into the model folder, then
    # `--swaps` flashes alternating v2, v1, v2, ... spread over the phase.
    soak_frames, total_frames = args.frames, args.frames + args.swap_frames
    warm_up_frames = min(1000, soak_frames // 10)
    truncated_at = soak_frames + args.swap_frames // 10
    swap_at = {soak_frames + args.swap_frames * (k + 2) // (args.swaps + 2): (v2 if k % 2 == 0 else v1)
               for k in range(args.swaps)}
    rss_samples: list[tuple[int, float]] = []
    flash_results: list[bool] = []

    def on_count(count: int) -> None:  # runs on the scoring thread: only start threads here
        if count == truncated_at:
            (models / "incoming.onnx").write_bytes(v2.read_bytes()[: v2.stat().st_size // 2])
        if count in swap_at:
            artefact = swap_at[count]
            threading.Thread(target=lambda: flash_results.append(all(r.ok for r in flash(artefact, [str(models)]))),
                             ).start()

    sink = RecordingSink(total_frames, on_count)
    source = LimitedSource(VideoSource(str(video), live=False, pace_fps=args.fps, loop=True), total_frames)
    service = ScoringService(ServiceConfig(model=models / "model.onnx", watch_poll_s=0.5, queue_capacity=args.queue,
                                           log_every_s=3600), source, [sink])
    stop_sampling = threading.Event()

    def sample_rss() -> None:
        while not stop_sampling.wait(0.5):
            rss_samples.append((sink.count, rss_mb()))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    started = time.monotonic()
    service.start()
    sampler.start()
    service.run()
    elapsed_s = time.monotonic() - started
    stop_sampling.set()
    sampler.join()

    counts = service.metrics.snapshot()
    scored = sink.count
    soak_rss = [(count, rss) for count, rss in rss_samples if warm_up_frames <= count <= soak_frames]
    rss_warm, rss_end = soak_rss[0][1], soak_rss[-1][1]
    growth_pct = 100 * (rss_end - rss_warm) / rss_warm
    swap_rss = [rss for count, rss in rss_samples if count > soak_frames]
    latency, inference = sink.latency_ms[:scored], sink.inference_ms[:scored]
    order = sink.model_index[:scored]
    switches = int(np.count_nonzero(np.diff(order)))
    v1_sha, v2_sha = read_artefact(v1).sha256, read_artefact(v2).sha256
    expected_models = [v1_sha, v2_sha] if args.swaps else [v1_sha]
    percentile = lambda values, q: round(float(np.percentile(values, q)), 2)  # noqa: E731
    report = {
        "frames_from_video": total_frames, "soak_frames": soak_frames, "swap_phase_frames": args.swap_frames,
        "camera_fps": args.fps, "frame_px": f"{args.width}x{args.height}", "model_px": args.model_size,
        "elapsed_s": round(elapsed_s, 1), "scored_per_s": round(scored / elapsed_s, 1),
        **counts,
        "accounted": counts["frames_scored"] + counts["frames_dropped"] + counts["frames_undecodable"]
        + counts["scoring_errors"],
        "soak_rss_mb_after_warm_up": round(rss_warm, 1), "soak_rss_mb_at_end": round(rss_end, 1),
        "soak_rss_mb_max": round(max(rss for _, rss in soak_rss), 1),
        "soak_rss_growth_pct_after_warm_up": round(growth_pct, 2),
        "soak_rss_mb_by_frames": {count: round(rss, 1) for count, rss in checkpoints(soak_rss, soak_frames)},
        "swap_phase_rss_mb_min_max_end": [round(min(swap_rss), 1), round(max(swap_rss), 1), round(swap_rss[-1], 1)]
        if swap_rss else None,
        "rss_samples": len(rss_samples),
        "soak_latency_ms_p50_p99": [percentile(latency[:soak_frames], 50), percentile(latency[:soak_frames], 99)],
        "soak_inference_ms_p50_p99": [percentile(inference[:soak_frames], 50),
                                      percentile(inference[:soak_frames], 99)],
        "swap_phase_latency_ms_p50_p99_max": [percentile(latency[soak_frames:], 50),
                                              percentile(latency[soak_frames:], 99),
                                              round(float(latency[soak_frames:].max()), 2)] if scored > soak_frames else None,
        "frames_by_model": {sha[:12]: int(np.count_nonzero(order == i)) for i, sha in enumerate(sink.models)},
        "model_switches": switches, "flashes_ok": flash_results,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(report, indent=2))
    checks = {
        "every frame accounted for": report["accounted"] == total_frames,
        "no frame failed (scoring errors, undecodable, sink errors)": counts["scoring_errors"] == 0
        and counts["frames_undecodable"] == 0 and counts["sink_errors"] == 0,
        "truncated artefact refused": counts["model_swaps_refused"] >= 1 or not args.swap_frames,
        f"{args.swaps} swaps, each one clean switch between frames": counts["model_swaps"] == args.swaps
        and switches == args.swaps and sink.models == expected_models and all(flash_results),
        "soak RSS growth after warm-up < 10%": growth_pct < 10,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
