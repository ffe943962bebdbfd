"""``brevitas-ldm recipes [show NAME]``: list the registered recipes or print one as TOML."""

from __future__ import annotations

import argparse

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.recipe import get_recipe, list_recipes


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("recipes", help="list recipes, or `recipes show NAME` to print one as TOML")
    parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    parser.add_argument("name", nargs="?", help="recipe name or .toml path (with `show`)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise RecipeError("`recipes show` needs a recipe name, e.g. `brevitas-ldm recipes show minmax-w8a8`")
        print(get_recipe(args.name).to_toml(), end="")
        return 0
    for name in list_recipes():
        print(f"{name}\t{get_recipe(name).description}")
    return 0
