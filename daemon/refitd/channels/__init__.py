"""Channels: where deliveries come from (base.py has the contract). One module per channel;
each declares itself with ``@register(name)`` and is listed once, in ``plugins.KINDS["channel"]``.
"""
