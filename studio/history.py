"""The History tab (being built in this session)."""

import streamlit as st


def render(engine) -> None:
    st.info("History: coming in this session.")
