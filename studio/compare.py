"""The Compare windows tab (being built in this session)."""

import streamlit as st


def render(engine) -> None:
    st.info("Compare windows: coming in this session.")
