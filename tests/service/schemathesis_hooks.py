"""schemathesis hooks for the negative run of tests/service/test_schemathesis.py, loaded
by the `st` process through SCHEMATHESIS_HOOKS.

In negative mode schemathesis still sends some cases it itself classifies as positive:
a negative strategy that drew a valid value, or a location it could not negate. Those
are valid requests that the service rightly accepts (a submission stored, a review
decided), so they would move the row counts the negative run must leave alone. They
are the positive run's business: here only cases schemathesis made invalid are sent.
"""

from __future__ import annotations

import schemathesis
from schemathesis import Case, HookContext
from schemathesis.generation import GenerationMode


@schemathesis.hook
def filter_case(context: HookContext, case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode is GenerationMode.NEGATIVE
