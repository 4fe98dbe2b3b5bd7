"""dserve's operations wing: the tools around the server, not the server itself.

A second package of the ``dserve`` distribution, registered through the same entry points and
hooks as any third-party plugin (``dserve_ops.plugin``). It imports the serving core
(``dserve``); the serving core never imports it. See docs/architecture.md.

==============  ==========================================================================
``plugin``      the hook implementations: its commands, `--dcp-path`, `--gpus`
``front``       the multi-GPU front (`dserve serve --gpus N`) and `dserve status`
``dcp``         NeMo-RL DCP checkpoints: `dserve convert`, `dserve serve --dcp-path`
``slurm``       `dserve slurm submit|connect`
``ray_serve``   `dserve ray-serve` and the Ray Serve application builder
``bench``       `dserve bench`: HTTP load test
``evaluation``  `dserve eval`: the held-out task family and its quality harness
==============  ==========================================================================
"""
