"""The official UFTP 3.1.0 XML schemas (Apache-2.0), shipped as package data; see README.md."""
