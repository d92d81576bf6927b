"""Writes the tiny dummy_data trees of datasets/{casme2,samm_lv,mmew,wdmd} (run: python datasets/make_dummy_data.py .)."""
import os, shutil, sys
import cv2, numpy as np, openpyxl, pympi

ROOT = sys.argv[1]  # repo root
rng = np.random.default_rng(0)

def jpg(path, i, w=64, h=48):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = np.zeros((h, w, 3), np.uint8)
  img[:] = (40 + 10 * i, 90, 160)
  cv2.circle(img, (w // 2, h // 2), 12, (200, 180, 150), -1)
  cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 60])

def fresh(name):
  d = os.path.join(ROOT, "datasets", name, "dummy_data")
  shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
  return d

# ---- CAS(ME)^2 (CASME_sq layout)
d = fresh("casme2")
vids = {"s15/15_0101disgustingteeth": 8, "s15/15_0502funnyerrors": 6,
        "s16/16_0101disgustingteeth": 8, "s19/23_0502funnyerrors": 6}
for v, n in vids.items():
  for i in range(1, n + 1):
    jpg(os.path.join(d, "rawpic", v, f"img{i:03d}.jpg"), i)  # zero-padded, as released
wb = openpyxl.Workbook()
ws = wb.active; ws.title = "CASFEcode_final"
for r in [
    (1, "disgust1_1", 2, 3, 5, "4+L10", "negative", "macro-expression", "disgust"),
    (1, "disgust1_2", 6, 7, 7, "12", "positive", "micro-expression", "happy"),
    (1, "happy1_1", 2, 4, 0, "12", "positive", "micro-expression", "happy"),
    (2, "disgust1_1", 1, 4, 8, "4", "negative", "micro-expression", "disgust"),
    (3, "happy1_1", 3, 4, 5, "6+12", "positive", "macro-expression", "happy")]:
  ws.append(r)
ws = wb.create_sheet("naming rule1")
for r in [(15, "s15", 1), (16, "s16", 2), (19, "s19", 3)]:
  ws.append(r)
ws = wb.create_sheet("naming rule2")
for code, name in [(101, "disgust1"), (102, "disgust2"), (502, "happy1")]:
  ws.append((code, name)); ws.cell(ws.max_row, 1).number_format = "0000"
wb.save(os.path.join(d, "CAS(ME)^2code_final.xlsx"))

# ---- SAMM long videos
d = fresh("samm_lv")
for v, n in {"006_1": 8, "007_3": 6}.items():
  for i in range(1, n + 1):
    jpg(os.path.join(d, "SAMM_longvideos", v, f"{v}_{i:04d}.jpg"), i)
wb = openpyxl.Workbook(); ws = wb.active; ws.title = "FACS_Movement_Only"
title = ["SAMM Long Videos - Version 3 (dummy, same layout)",
         "Micro- and macro-movements coded with FACS", None,
         "Onset, Apex and Offset are frame numbers of the image files",
         "Type: Micro - 1/2 = micro-movement (< 1/2 s), Macro = macro",
         None, "Apex -1 = not coded", None, None]
for t in title:
  ws.append([t])
ws.append(["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset",
           "Duration", "Type", "Action Units", "Notes"])
for r in [(6, "006_1_1", 1, 2, 4, 6, 5, "Micro - 1/2", "R12", None),
          (6, "006_1_2", 1, 1, -1, 8, 8, "Macro", "4+7", "long"),
          (7, "007_3_1", 3, 3, 4, 5, 3, "Micro - 1/2", "12", None)]:
  ws.append(r)
wb.save(os.path.join(d, "SAMM_LongVideos_V3_Release.xlsx"))

# ---- MMEW
d = fresh("mmew")
clips = [("S01", "happiness", "S01-01-001", 6, (2, 3, 5)),
         ("S01", "surprise", "S01-02-001", 5, (1, 2, 5)),
         ("S02", "disgust", "S02-01-001", 6, (2, 4, 6)),
         ("S03", "others", "S03-03-002", 5, (1, 3, 4)),
         ("S08", "fear", "S08-04-001", 5, (2, 3, 4))]
for s, emo, clip, n, _ in clips:
  for i in range(1, n + 1):
    jpg(os.path.join(d, "MMEW_Final", "Micro_Expression", emo, clip, f"{i}.jpg"), i)
wb = openpyxl.Workbook(); ws = wb.active; ws.title = "Sheet1"
ws.append(["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame",
           "AUs", "Estimated Emotion"])
for s, emo, clip, n, (a, b, c) in clips:
  ws.append([s, clip, a, b, c, "12", emo])
wb.save(os.path.join(d, "MMEW_Final", "MMEW_Micro_Exp.xlsx"))

# ---- WDMD
d = fresh("wdmd")
FPS = 25
videos = [("P01", "P01_interview_01", 12), ("P01", "P01_interview_02", 10),
          ("P02", "P02_talkshow_01", 10), ("P04", "P04_film_01", 10)]
ann = {  # (t0_ms, t1_ms, value) on 'expression'; speaking spans
    "P01_interview_01": ([(80, 200, "micro apex=120"), (280, 440, "macro")],
                         [(0, 160, "speaking"), (320, 480, "speaking")]),
    "P01_interview_02": ([(40, 160, "micro")], [(200, 400, "speaking")]),
    "P02_talkshow_01": ([(120, 240, "macro apex=200")], [(0, 400, "speaking")]),
    "P04_film_01": ([], [(100, 250, "listening")]),
}
for subj, vid, n in videos:
  os.makedirs(os.path.join(d, "videos", subj), exist_ok=True)
  w = cv2.VideoWriter(os.path.join(d, "videos", subj, vid + ".mp4"),
                      cv2.VideoWriter_fourcc(*"mp4v"), FPS, (48, 48))
  for i in range(n):
    img = np.zeros((48, 48, 3), np.uint8); img[:] = (60, 80 + 5 * i, 120)
    cv2.circle(img, (24, 24), 10, (150, 170, 200), -1)
    w.write(img)
  w.release()
  eaf = pympi.Elan.Eaf(author="meldae-jax dummy")
  eaf.add_linked_file(f"../videos/{subj}/{vid}.mp4", mimetype="video/mp4")
  eaf.remove_tier("default")
  eaf.add_tier("expression"); eaf.add_tier("speaking")
  exprs, speak = ann[vid]
  for t0, t1, v in exprs:
    eaf.add_annotation("expression", t0, t1, v)
  for t0, t1, v in speak:
    eaf.add_annotation("speaking", t0, t1, v)
  os.makedirs(os.path.join(d, "annotations"), exist_ok=True)
  eaf.to_file(os.path.join(d, "annotations", vid + ".eaf"))
