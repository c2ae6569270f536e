"""
The admin HTTP service: health, metrics and the connections API.
"""
