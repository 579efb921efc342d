"""`branch-operator`: run the operator, the embedded demo/dev environment, and helper commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from branch_operator.cli.publish import add_event_arguments
from branch_operator.config import Settings
from branch_operator.ops.logformat import LOG_FORMATS, setup_logging


def _cmd_run(args: argparse.Namespace) -> int:
    """Production entry point: kopf against the cluster of the in-cluster config or kubeconfig."""
    import kopf

    import branch_operator.handlers  # noqa: F401  (registers the kopf handlers)

    overrides: dict[str, Any] = {}
    if args.nats:
        overrides["nats_url"] = args.nats
    if args.namespace:
        overrides["watch_namespaces"] = ",".join(args.namespace)
    settings = Settings(**overrides)
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces or (),
        # Every replica runs kopf on its own so its watches stay warm; one replica in charge at a time is
        # the Lease's job (OMS_LEADER_ELECTION), not kopf peering's.
        standalone=True,
        memo=kopf.Memo(config=settings, kubeconfig=args.kubeconfig, tune_gc=True),
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from branch_operator.cli.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING if not args.verbose else logging.INFO)
    ok = asyncio.run(run_demo())
    return 0 if ok else 1


def _cmd_dev(args: argparse.Namespace) -> int:
    from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

    async def main() -> None:
        env = EmbeddedEnv(api_port=args.api_port, nats_port=args.nats_port)
        await env.start()
        operator = None if args.no_operator else OperatorHandle(env.settings(**env.webhook_settings()), env.kubeconfig)
        stop = asyncio.Event()
        try:
            if operator is not None:
                await operator.start()
            # After kopf started: its own signal handlers would stop only the operator, not this command.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"api={env.api_url}", flush=True)
            print(f"nats={env.nats_url}", flush=True)
            print(f"kubeconfig={env.kubeconfig}", flush=True)
            print(f"export KUBECONFIG={env.kubeconfig}", flush=True)
            if operator is None:
                # The health port defaults to 8080: a second operator on this machine needs its own (or 0).
                run = f"OMS_HEALTH_PORT=0 branch-operator run --kubeconfig {env.kubeconfig} --nats {env.nats_url}"
                print(f"# run: {run}", flush=True)
            await stop.wait()
        finally:
            if operator is not None:
                await operator.stop()
            await env.stop()

    asyncio.run(main())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from branch_operator.cli.simulate import read_file, run

    try:
        return asyncio.run(run(read_file(args.file), namespace=args.namespace, kubeconfig=args.kubeconfig,
                               context=args.context))
    except (OSError, ValueError) as exc:  # unreadable file, not an AutoMergePolicy: one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_crds(args: argparse.Namespace) -> int:
    from branch_operator.api.crdgen import check_crds, crds_yaml, write_crds

    if args.check:
        problems = check_crds(args.check)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    if args.write:
        for path in write_crds(args.write):
            print(path)
        return 0
    sys.stdout.write(crds_yaml())
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from branch_operator.cli.publish import event_from_args, publish_event, subject_for

    settings = Settings()
    event = event_from_args(args, namespace=args.event_namespace)
    nats_url = args.nats or settings.nats_url
    seq = asyncio.run(publish_event(nats_url, subject_for(args.kind, settings), event, binary=args.binary))
    print(f"published {event['type']} id={event['id']} seq={seq}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="branch-operator", description=__doc__)
    p.add_argument("--log-level", default=os.environ.get("OMS_LOG_LEVEL", "INFO"))
    p.add_argument("--log-format", choices=LOG_FORMATS, default=os.environ.get("OMS_LOG_FORMAT", "text"),
                   help="text, or json: one JSON object per line (default $OMS_LOG_FORMAT, else text)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against a cluster (in-cluster config or kubeconfig)")
    run.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    run.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable)")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then $KUBECONFIG)")
    run.set_defaults(fn=_cmd_run)

    demo = sub.add_parser("demo", help="play the original design's three scenarios on the embedded default")
    demo.add_argument("--verbose", "-v", action="store_true")
    demo.set_defaults(fn=_cmd_demo)

    dev = sub.add_parser("dev", help="embedded API server + NATS + operator, kept running")
    dev.add_argument("--api-port", type=int, default=0, help="0 = any free port")
    dev.add_argument("--nats-port", type=int, default=0, help="0 = any free port")
    dev.add_argument("--no-operator", action="store_true",
                     help="only the API server (with the CRDs) and NATS: run `branch-operator run` yourself")
    dev.set_defaults(fn=_cmd_dev)

    crds = sub.add_parser("crds", help="print the CRDs rendered from the API models")
    crds.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    crds.add_argument("--check", metavar="DIR", help="exit 1 if DIR differs from the models")
    crds.set_defaults(fn=_cmd_crds)

    pub = sub.add_parser("publish", help="publish a Funnel indexing event (for testing)")
    add_event_arguments(pub)
    pub.add_argument("--event-namespace", help="Kubernetes namespace of the Branch (data.namespace)")
    pub.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    pub.set_defaults(fn=_cmd_publish)

    sim = sub.add_parser("simulate", help="what a proposed AutoMergePolicy would merge, block or defer, and why")
    sim.add_argument("-f", "--file", required=True, help="YAML with one or more AutoMergePolicies ('-' = stdin)")
    sim.add_argument("--namespace", "-n", help="default: the policy's metadata.namespace, else the context's")
    sim.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then $KUBECONFIG)")
    sim.add_argument("--context", help="kubeconfig context")
    sim.set_defaults(fn=_cmd_simulate)

    from branch_operator.cli.dlq import add_parser as add_dlq_parser

    add_dlq_parser(sub)  # dlq list / dlq replay
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
