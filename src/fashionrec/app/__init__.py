"""The web app (Streamlit): `fashionrec app INDEX_DIR` runs SCRIPT; see main.py for the layout."""

from pathlib import Path

SCRIPT = Path(__file__).with_name("main.py")
