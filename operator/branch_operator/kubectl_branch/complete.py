"""`kubectl_complete-branch`: shell completion for `kubectl branch`, in kubectl's plugin protocol.

kubectl (1.26 and later) completes a plugin's arguments by running ``kubectl_complete-<plugin>`` from
PATH with the words after the plugin's name, the last one being the word under the cursor (possibly
empty), and prints what it answers: Cobra's ``__complete`` format, one ``value<TAB>description`` per
line, then ``:<directive>``. Subcommands and flags come from the plugin's own parser; branch names,
lock names and namespaces from the cluster (the kubeconfig, context and namespace already typed
count). A cluster that cannot be reached completes nothing rather than fail the shell.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from branch_operator.api.models import Branch, BranchLock, LockType, Phase
from branch_operator.clients.kube import KubeClient
from branch_operator.kubectl_branch import cli

# Cobra's ShellCompDirective bits.
NO_SPACE, NO_FILE_COMP = 2, 4
CLUSTER_TIMEOUT = 5.0
OUTPUTS = ["json", "yaml", "wide", "name", "jsonpath=", "jsonpath-as-json="]
# Subcommands whose first positional argument is a Branch's name.
NAMED = {"describe", "why", "locks", "unlock", "set-state", "merge", "audit"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return str(choice.help or "")
    return ""


def _takes_value(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for a in parser._actions if a.option_strings and a.nargs != 0 for opt in a.option_strings}


def _flags(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    return [(opt, str(a.help or "")) for a in parser._actions if a.help != argparse.SUPPRESS
            for opt in a.option_strings if opt.startswith("--") or len(a.option_strings) == 1]


class Typed:
    """What the words typed so far say: the subcommand, its positionals, the flags' values."""

    def __init__(self, words: Sequence[str]) -> None:
        self.root = cli.build_parser()
        self.commands = _subparsers(self.root)
        self.command: str | None = None
        self.positionals: list[str] = []
        self.values: dict[str, str] = {}
        self.pending: str | None = None  # a flag still waiting for its value
        for word in words:
            if self.pending is not None:
                self.values[self.pending] = word
                self.pending = None
            elif word.startswith("-"):
                flag, eq, value = word.partition("=")
                if eq:
                    self.values[flag] = value
                elif flag in _takes_value(self.parser):
                    self.pending = flag
            elif self.command is None and word in self.commands:
                self.command = word
            else:
                self.positionals.append(word)

    @property
    def parser(self) -> argparse.ArgumentParser:
        return self.commands[self.command] if self.command else self.root

    def value(self, *flags: str) -> str | None:
        return next((self.values[f] for f in flags if f in self.values), None)


async def _names(typed: Typed, plural: str) -> list[str]:
    kube = await KubeClient.connect(typed.value("--kubeconfig"), typed.value("--context"))
    try:
        namespace = typed.value("-n", "--namespace") or cli.current_namespace(
            typed.value("--kubeconfig"), typed.value("--context"))
        if plural == "namespaces":
            result = await kube.core.list_namespace()
            return sorted(ns.metadata.name for ns in result.items)
        objs = await kube.list_objects(plural, namespace)
        return sorted(str(o["metadata"]["name"]) for o in objs)
    finally:
        await kube.close()


def _cluster(typed: Typed, plural: str) -> list[str]:
    try:
        return asyncio.run(asyncio.wait_for(_names(typed, plural), CLUSTER_TIMEOUT))
    except Exception:  # no cluster, no permission, timeout: complete nothing, never break the shell
        return []


def complete(args: Sequence[str]) -> tuple[list[tuple[str, str]], int]:
    """(candidates with descriptions, directive) for ``kubectl branch ARGS`` (the last arg is being typed)."""
    words, partial = list(args[:-1]), (args[-1] if args else "")
    typed = Typed(words)
    candidates: list[tuple[str, str]]
    directive = NO_FILE_COMP
    if typed.pending is not None:
        flag = typed.pending
        if flag in ("-o", "--output"):
            candidates, directive = [(o, "") for o in OUTPUTS], NO_FILE_COMP | (NO_SPACE if "=" in partial else 0)
            if typed.command == "audit":
                candidates = [("table", ""), ("json", "")]
        elif flag in ("-n", "--namespace"):
            candidates = [(n, "") for n in _cluster(typed, "namespaces")]
        elif flag == "--lock":
            candidates = [(t.value, "lock type") for t in LockType] + [
                (n, "BranchLock") for n in _cluster(typed, BranchLock.PLURAL)]
        else:
            candidates = []
    elif partial.startswith("-"):
        candidates = _flags(typed.parser)
    elif typed.command is None:
        candidates = [(name, _help(typed.root, name)) for name in typed.commands if name != "ls"]
    elif typed.command in NAMED and not typed.positionals:
        candidates = [(n, "Branch") for n in _cluster(typed, Branch.PLURAL)]
    elif typed.command == "set-state" and len(typed.positionals) == 1:
        candidates = [(p.value, "") for p in Phase if p is not Phase.LOCKED_FOR_WRITE]
    elif typed.command == "publish" and not typed.positionals:
        candidates = [(k, "Funnel event") for k in ("started", "completed", "failed")]
    else:
        candidates = []
    return [(c, d) for c, d in candidates if c.startswith(partial)], directive


def main(argv: Sequence[str] | None = None) -> int:
    candidates, directive = complete(sys.argv[1:] if argv is None else argv)
    for value, description in candidates:
        print(f"{value}\t{' '.join(description.split())}" if description else value)
    print(f":{directive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
