"""`./run bench llm|emotion|expressions|discord|gpu|cast|memory|recall|repetition|autonomy|window|
concurrency`: the figures in docs/."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.cli.main import GIL_SWITCH_INTERVAL
from bot.config import Config, load_config
from bot.errors import BotError, ConfigError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./run bench", description=__doc__)
    parser.add_argument("--config", default="config.toml", help="settings file (default: config.toml)")
    parser.add_argument(
        "what",
        choices=[
            "llm",
            "emotion",
            "expressions",
            "discord",
            "gpu",
            "cast",
            "memory",
            "recall",
            "repetition",
            "autonomy",
            "window",
            "concurrency",
        ],
        help="llm: turn latency and prompt reuse; emotion: judges on GoEmotions dev; expressions: renders; "
        "cast: prompt reuse with two members and with two personas alternating; "
        "memory: recall of early facts, warm-turn cost, lookup time, summaries, large erasures; "
        "recall: recall by words and by meaning on paraphrased questions, embedding rate, lookup time; "
        "repetition: replies repeating earlier ones, without and with DRY, and cast copies; "
        "autonomy: the model time of a persona speaking up on its own, and a reply's wait behind it; "
        "window: what a moved prompt window reads and costs at 4k/16k/32k, shifted or read again; "
        "concurrency: 1/2/4/8 channels at once on the embedded model against raw batched decode; "
        "discord: the whole bot on the local server; gpu: LLM and inpainting resident on one CUDA GPU",
    )
    parser.add_argument(
        "--data", type=Path, help="emotion, recall, window: GoEmotions dev.tsv (default ../shared/goemotions)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--gpu", action="store_true", help="expressions: full-size SD 1.5 inpainting on CUDA")
    parser.add_argument(
        "--contended", action="store_true", help="llm, discord: measure beside a busy loop on one core"
    )
    parser.add_argument(
        "--backend",
        choices=["llamacpp", "openai"],
        default="llamacpp",
        help="llm: openai compares the embedded model with the same model behind a local server",
    )
    return parser


async def _run(config: Config, args: argparse.Namespace) -> int:
    if args.what == "emotion":
        from benchmarks.emotion import bench_emotion

        return await bench_emotion(config, args)
    if args.what == "llm" and args.backend == "openai":
        from benchmarks.server import bench_backends

        return await bench_backends(config, args.quick)
    if args.what == "repetition":
        from benchmarks.repetition import bench_repetition

        return await bench_repetition(config, args.quick)
    if args.what == "window":
        from benchmarks.window import bench_window

        return await bench_window(config, args.quick, args.data)
    if args.what == "concurrency":
        from benchmarks.concurrency import bench_concurrency

        return await bench_concurrency(config, args.quick)
    if args.what == "autonomy":
        from benchmarks.autonomy import bench_autonomy

        return await bench_autonomy(config, args.quick)
    if args.what == "cast":
        from benchmarks.cast import bench_cast

        return await bench_cast(config, args.quick)
    if args.what == "recall":
        from benchmarks.recall import bench_recall

        return await bench_recall(config, args)
    if args.what == "memory":
        from benchmarks.memory import bench_memory

        return await bench_memory(config, args.quick)
    if args.what == "llm":
        from benchmarks.llm import bench_llm

        await bench_llm(config, args.quick, args.contended)
        return 0
    if args.what == "expressions":
        from benchmarks.expressions import bench_expressions

        return await bench_expressions(config, args.quick, args.gpu)
    if args.what == "gpu":
        from benchmarks.gpu import bench_resident

        return await bench_resident(config, args.quick)
    from benchmarks.discord_bot import bench_discord

    return await bench_discord(config, args.quick, args.contended)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        return asyncio.run(_run(load_config(args.config), args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
    except BotError as exc:
        print(f"bench {args.what}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, whatever broke: a benchmark reports figures or why it has none
        print(f"bench {args.what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
