"""setuptools needs this file only to run the cffi builder."""
from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
