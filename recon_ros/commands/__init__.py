"""Sub-commands of ``recon-ros``: one module each, with ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy dependencies inside ``run`` so that ``--help``
stays fast."""
