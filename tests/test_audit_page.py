"""review.html in a real browser: Debian's headless Chromium, driven by selenium, marks findings with the
keyboard, saves the CSV, and `mlkit audit --apply` reads it."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from test_audit import CLASSES, workspace  # noqa: F401 (the fixture)

from mlkit.cli import main
from mlkit.data.manifest import read_manifest


def chromium(download_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def wait_for(path, seconds=20):
    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert path.exists(), f"the page saved no {path.name}"
    return path


@pytest.mark.slow
def test_review_page_marks_findings_saves_and_apply_reads_it(workspace, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    assert main(["audit", str(workspace["cache"]), "--workdir", str(workspace["root"]), "--folds", "3",
                 "--units", "32"]) == 0
    folder = workspace["root"] / "audit" / "toy_all_x_inet_avg"
    page = folder / "review.html"
    assert "http" not in page.read_text().replace("http://www.w3.org", "")
    review = pd.read_csv(folder / "review.csv", keep_default_na=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(downloads)
    try:
        driver.get(page.as_uri())
        findings = driver.find_elements(By.CSS_SELECTOR, ".finding")
        assert len(findings) == len(review)
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("d")          # the leak (first): drop its copy
        body.send_keys("k")          # the conflict: keep
        Select(driver.find_element(By.ID, "kind")).select_by_value("label_error")
        shown = driver.find_elements(By.CSS_SELECTOR, ".finding")
        assert {element.get_attribute("data-index") for element in shown} == {
            str(i) for i in np.flatnonzero(review["kind"] == "label_error")}
        target = next(element for element in shown
                      if review.loc[int(element.get_attribute("data-index")), "row"] == 7)
        target.find_element(By.CSS_SELECTOR, "input.suggested").click()
        field = target.find_element(By.CSS_SELECTOR, "input.suggested")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("cat", Keys.ENTER)
        body.send_keys("s")
        saved = wait_for(downloads / "review.csv")
    finally:
        driver.quit()
    decisions = pd.read_csv(saved, keep_default_na=False)
    assert list(decisions.columns) == list(review.columns) and len(decisions) == len(review)
    assert decisions["decision"].tolist()[:2] == ["accept", "reject"]
    relabelled = decisions[decisions["row"] == 7].iloc[0]
    assert (relabelled["action"], relabelled["decision"], relabelled["suggested"]) == ("relabel", "accept", "cat")
    out = tmp_path / "audited.csv"
    assert main(["audit", "--apply", str(saved), "--manifest", str(workspace["manifest"]), "--out", str(out)]) == 0
    audited = read_manifest(out)
    labels = dict(zip(audited.rows["image"], audited.rows["labels"]))
    assert workspace["images"][100] not in labels and labels[workspace["images"][7]] == ("cat",)
    assert json.loads((folder / "summary.json").read_text())["review"]["shortlisted"] == len(review)
