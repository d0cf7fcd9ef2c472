"""The fleet: N replicas of the server behind one HTTP port on Ray Serve, one budget for all of them.

Imported only by ``adafocus serve-ray``, ``adafocus bench-fleet`` and their tests: the plain server runs without
Ray installed (``pip install -e '.[ray]'`` adds it).
"""
