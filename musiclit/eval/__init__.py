"""Did the fine-tune work? Metrics, copy detection and the run report.

Layer: ``eval`` may import ``infer``, ``data``, ``model`` and ``io``; ``train`` and ``commands`` may import
``eval``; nothing below imports it.
"""
