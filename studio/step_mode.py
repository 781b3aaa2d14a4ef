"""The Step by step tab (being built in this session)."""

import streamlit as st


def render(engine) -> None:
    st.info("Step by step: coming in this session.")
