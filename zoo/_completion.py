"""Shell completion for ``zoo`` (``zoo completion bash|zsh``), generated from its
argparse parser: every command and subcommand with its options, whatever the parser
holds when the script is made. Only argparse is imported."""

from __future__ import annotations

import argparse

__all__ = ["SHELLS", "command_tree", "script"]


def command_tree(parser: argparse.ArgumentParser) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Command path (``zoo``, ``zoo sweep``, ``zoo sweep plan``, ...) -> (its subcommands
    with their help, its option strings), for every parser under ``parser``."""
    tree: dict[str, tuple[dict[str, str], list[str]]] = {}

    def walk(path: str, node: argparse.ArgumentParser) -> None:
        subcommands: dict[str, str] = {}
        options: list[str] = []
        for action in node._actions:
            options += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for name, child in action.choices.items():
                    subcommands[name] = helps.get(name, "")
                    walk(f"{path} {name}", child)
        tree[path] = (subcommands, options)

    walk(parser.prog, parser)
    return tree


def _quoted(text: str) -> str:
    """``text`` as one single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _bash(tree: dict[str, tuple[dict[str, str], list[str]]], prog: str) -> str:
    paths = "|".join(_quoted(path) for path in tree if path != prog)
    cases = [
        f"        {_quoted(path)}) subcommands={_quoted(' '.join(subs))}; "
        f"options={_quoted(' '.join(options))} ;;"
        for path, (subs, options) in tree.items()
    ]
    return "\n".join(
        [
            f'# {prog} completion for bash: eval "$({prog} completion bash)", e.g. in ~/.bashrc',
            f"_{prog}() {{",
            f'    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd={prog} word i subcommands options',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        word="${COMP_WORDS[i]}"',
            f'        case "$cmd $word" in {paths}) cmd="$cmd $word" ;; esac',
            "    done",
            '    case "$cmd" in',
            *cases,
            "    esac",
            "    if [[ $cur == -* ]]; then",
            '        COMPREPLY=($(compgen -W "$options" -- "$cur"))',
            "    elif [[ -n $subcommands ]]; then",
            '        COMPREPLY=($(compgen -W "$subcommands" -- "$cur"))',
            "    fi  # else none: -o default completes file names",
            "}",
            f"complete -o default -F _{prog} {prog}",
            "",
        ]
    )


def _zsh(tree: dict[str, tuple[dict[str, str], list[str]]], prog: str) -> str:
    paths = "|".join(_quoted(path) for path in tree if path != prog)
    cases = []
    for path, (subs, options) in tree.items():
        described = " ".join(_quoted(f"{name}:{text}") for name, text in subs.items())
        cases.append(
            f"        {_quoted(path)}) subs=({described}); "
            f"opts=({' '.join(_quoted(o) for o in options)}) ;;"
        )
    return "\n".join(
        [
            f"#compdef {prog}",
            f'# {prog} completion for zsh: eval "$({prog} completion zsh)" after compinit, '
            f"e.g. in ~/.zshrc, or save it as _{prog} in a folder of $fpath",
            f"_{prog}() {{",
            f"    local cmd={prog} word",
            "    local -a subs opts",
            '    for word in "${(@)words[2,CURRENT-1]}"; do',
            f'        case "$cmd $word" in {paths}) cmd="$cmd $word" ;; esac',
            "    done",
            '    case "$cmd" in',
            *cases,
            "    esac",
            "    if [[ $PREFIX == -* ]]; then",
            "        compadd -a opts",
            "    elif (( ${#subs} )); then",
            f"        _describe -t commands '{prog} command' subs",
            "    else",
            "        _files",
            "    fi",
            "}",
            "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
            f'    _{prog} "$@"',
            "else",
            f"    compdef _{prog} {prog}",
            "fi",
            "",
        ]
    )


SHELLS = {"bash": _bash, "zsh": _zsh}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser``'s program for ``shell`` (one of SHELLS)."""
    return SHELLS[shell](command_tree(parser), parser.prog)
