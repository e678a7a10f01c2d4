"""The device lab: profile exported programs on real devices through a job queue.

Stands alone (it never imports ``mobilemoe`` or ``flows``); its protocol is written down
in :mod:`device_lab.schema`. A submitter puts a job (program + tokenizer + benchmark)
on a queue, a runner next to the devices claims it, runs it on a backend and writes a
result document back:

    python -m device_lab.runner --queue s3://lab/queue --backend local-cpu
    python -m device_lab.submit --queue s3://lab/queue --artifact model.pte \\
        --tokenizer tokenizer.json --wait 600

From Python: :func:`device_lab.submit.submit_job` and :func:`device_lab.submit.wait_for_result`,
:class:`device_lab.runner.Runner` for an embedded runner. Modules: ``schema`` (documents,
names, URIs), ``transport`` (folder, S3), ``queue`` (claim protocol, leases),
``runner``, ``submit``, ``backends`` (``local-cpu``, ``artifact-check``).
"""

__version__ = "0.1.0"
