"""Ship the top-level ``prompts/`` and ``alignment/`` folders inside the wheel.

They stay at the repository root, where users edit them, and install as the
package-data-only packages ``llm_st.prompts`` and ``llm_st.recipes`` so that
``pip install llm-st`` users get the same templates and recipes.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["llm_st", "llm_st.*"]) + ["llm_st.prompts", "llm_st.recipes"],
    package_dir={"llm_st.prompts": "prompts", "llm_st.recipes": "alignment"},
    package_data={
        "llm_st.prompts": ["*.j2", "*.md"],
        "llm_st.recipes": ["**/*.yaml", "**/*.md"],
    },
)
