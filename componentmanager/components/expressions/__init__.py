"""The safe expression language of ``filter``, ``transform``, ``route`` and the sinks.

:mod:`.compiler` parses, checks and compiles expression text; :mod:`.functions` is what a
compiled expression calls per event. Import from here.
"""

from componentmanager.components.expressions.compiler import (
    FUNCTIONS,
    EvaluationError,
    Expression,
    ExpressionError,
    ExpressionStr,
    compile_expression,
    validate_expression,
)

__all__ = [
    "FUNCTIONS", "EvaluationError", "Expression", "ExpressionError", "ExpressionStr",
    "compile_expression", "validate_expression",
]
