"""The web app: find look-alikes of a photo, a camera shot or a catalog product (Streamlit).

Started by `fashionrec app INDEX_DIR`, which runs `streamlit run main.py -- INDEX_DIR` (this file:
`fashionrec.app.SCRIPT`). Each page is a module with its `page()` (find_page, explore_page), sharing
state.py (the index, opened once per process and shared by every session, and the query) and widgets.py
(cards); catalog images are read from the catalog's zip or folder on demand, never unpacked.
"""

from __future__ import annotations

import streamlit as st

from fashionrec.app import explore_page, find_page
from fashionrec.app.widgets import page_icon, phone_layout

PAGES = (find_page, explore_page)  # one module per page, each with its `page()`


def main() -> None:
    st.set_page_config(page_title="fashionrec: find similar products", page_icon=page_icon(), layout="wide")
    phone_layout()
    st.navigation([module.page() for module in PAGES], position="top").run()


if __name__ == "__main__":
    main()
