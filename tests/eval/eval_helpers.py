"""Helpers shared by the evaluation tests (imported as a plain module: pytest puts this
folder on sys.path)."""

from __future__ import annotations


def instances(request_type: str, args_list, task_name: str = "t"):
    """lm-eval Instances as a task would make them (one document per request)."""
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type=request_type, doc={}, arguments=args, idx=0, metadata=(task_name, i, 1))
        for i, args in enumerate(args_list)
    ]
