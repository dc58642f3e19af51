"""What a loop program may be: checked and compiled before it is saved (deploy, in the web
process, which imports this module and not the runtime) and before it runs (in the worker).

Syntax, exactly one Loop subclass with run(self, event, step), imports from an allow-list only,
no names or attributes that lead to unchecked attribute access; then RestrictedPython compiles
it (unless LOOPS_PYTHON_GUARDS is off). A refusal names the line. The same names and sets are
what the runtime's guards refuse as a program runs (runtime.py).
"""

import ast

from RestrictedPython import compile_restricted_exec

ALLOWED_MODULES = frozenset(
    {
        "json", "math", "re", "datetime", "time", "random", "statistics", "decimal",
        "itertools", "functools", "collections", "string", "textwrap", "hashlib", "base64",
        "uuid", "logging",
    }
)  # fmt: skip
FILENAME = "<loop>"
# Builtins a loop cannot have; naming one is refused at deploy with its line.
FORBIDDEN_NAMES = frozenset(
    {"open", "globals", "locals", "vars", "input", "breakpoint", "compile", "memoryview", "help"}
)


# Module attributes that lead back to unrestricted attribute access, and from there to any
# module's globals: string.Formatter resolves "{0.attr[key]}" fields with the real getattr;
# functools' wrappers copy attributes named by the caller with it (update_wrapper can pour a
# runtime function's __globals__ into the program's own); singledispatch evaluates string
# annotations with plain eval.
BLOCKED_MODULE_NAMES = {
    "string": frozenset({"Formatter"}),
    "functools": frozenset(
        {
            "update_wrapper",
            "wraps",
            "singledispatch",
            "singledispatchmethod",
            "WRAPPER_ASSIGNMENTS",
            "WRAPPER_UPDATES",
        }
    ),
}
# str.format and str.format_map walk "{0.attr}" fields with the real getattr, however they are
# reached: a str, a str subclass through super(), collections.UserString, the unbound method.
FORMAT_METHODS = frozenset({"format", "format_map"})


class CodeError(Exception):
    def __init__(self, line, message):
        super().__init__(f"Line {line}: {message}")
        self.line = line
        self.message = message


def _first_line_number(text):
    # RestrictedPython reports "Line 3: …"
    if text.startswith("Line "):
        head = text[5:].split(":", 1)[0]
        if head.isdigit():
            return int(head), text.split(":", 1)[1].strip()
    return 1, text


def compile_loop(code, *, guards=True):
    """Check a program and compile it (under the RestrictedPython policy unless `guards` is
    off). Raises CodeError naming the line, and nothing else, whatever the text."""
    if not isinstance(code, str):
        raise CodeError(1, "the program must be text")
    if "\0" in code:
        raise CodeError(
            code.count("\n", 0, code.index("\0")) + 1, "the program contains a null byte"
        )
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodeError(
            code.count("\n", 0, exc.start) + 1,
            "the program contains a character that is not valid Unicode (a lone surrogate)",
        ) from None
    try:
        return _compile(code, guards)
    except SyntaxError as exc:
        raise CodeError(exc.lineno or 1, f"syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise CodeError(1, "the program is nested too deeply or too large to compile") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise CodeError(1, f"the program cannot be compiled: {exc}") from None


def _compile(code, guards):
    tree = ast.parse(code, filename=FILENAME)
    if guards:
        _check_names(tree)
    _check_shape(tree)
    if not guards:
        return compile(tree, FILENAME, "exec", dont_inherit=True)
    result = compile_restricted_exec(code, filename=FILENAME)
    if result.errors:
        line, message = _first_line_number(result.errors[0])
        raise CodeError(line, message)
    return result.code


BLOCKED_ATTRIBUTES = frozenset().union(*BLOCKED_MODULE_NAMES.values())


def _check_names(tree):
    """What can be refused before the program runs is refused here, with its line; the
    guards refuse the rest (names built at run time) as the program runs."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_MODULES:
                    raise CodeError(node.lineno, f"importing '{alias.name}' is not allowed")
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module not in ALLOWED_MODULES:
                raise CodeError(node.lineno, f"importing from '{node.module}' is not allowed")
            for alias in node.names:
                if alias.name in BLOCKED_MODULE_NAMES.get(node.module, ()):
                    raise CodeError(
                        node.lineno, f"'{node.module}.{alias.name}' is not available in a loop"
                    )
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise CodeError(node.lineno, f"'{node.id}' is not available in a loop")
        elif isinstance(node, ast.Attribute) and node.attr in BLOCKED_ATTRIBUTES:
            raise CodeError(node.lineno, f"'{node.attr}' is not available in a loop")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in FORMAT_METHODS
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            raise CodeError(
                node.lineno, f"str.{node.attr}() is not available in a loop: use an f-string"
            )


def _check_shape(tree):
    loop_classes = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id == "Loop" for b in node.bases)
    ]
    if not loop_classes:
        raise CodeError(1, "the program must define one subclass of Loop")
    if len(loop_classes) > 1:
        raise CodeError(loop_classes[1].lineno, "the program must define exactly one Loop subclass")
    cls = loop_classes[0]
    run = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    if run is None:
        raise CodeError(cls.lineno, f"class {cls.name} must define run(self, event, step)")
    names = [a.arg for a in run.args.posonlyargs + run.args.args]
    if len(names) != 3 or run.args.vararg or run.args.kwonlyargs:
        raise CodeError(run.lineno, "run must take exactly (self, event, step)")
