"""A procedural abdominal CT phantom: segbench's built-in dataset, generated on first use.

A new user trains on it with no download. It is built as a fair stand-in for Synapse
(BTCV), not an easy toy: portal-venous-phase Hounsfield units, so the pancreas and the
gallbladder have little contrast to the bowel, duodenum and vessels around them;
unlabelled look-alikes next to every target (IVC beside the aorta, duodenum and jejunum
around the pancreas, colon and duodenum under the gallbladder); realistic organ volumes,
so the small organs are a few hundred voxels per slice at most and the background is
over 90 % of the scan; smooth random deformation, per-case size and position
variation, partial-volume blur and noise.

Conventions
-----------
Arrays are ``(Z, Y, X)``: Z = slice, inferior -> superior; Y = row, anterior ->
posterior; X = column, patient right -> patient left (radiological display: the
patient's right is on the image's left, anterior at the top). Spacing is
``(sz, sy, sx)`` in mm in the same order. The anatomy is laid out in a *body frame*
in mm with the same axis directions: x to the patient's left, y posterior, z superior;
origin at the centre of the body outline in-plane and at the centre of the L1
vertebral body in z. Every anatomical coordinate in the tables below is for an average
adult (patient scale 1) and is multiplied by the case's patient scale.

Anatomy (adult; volumes at patient scale 1)
-------------------------------------------
=========== ============ ==================================================================
structure   volume       where
=========== ============ ==================================================================
liver       1500 mL      right upper quadrant under the right dome of the diaphragm; thick
                         right lobe hugging the lateral wall down to ~L3, thin left lobe
                         crossing the midline anteriorly, over the stomach
spleen      200 mL       left upper quadrant, posterolateral, crescent against the ribs
kidneys     150 mL each  either side of the spine (T12-L3), lateral to psoas, upper poles
                         tilted medially/posteriorly, hilum anteromedial with sinus fat;
                         the right one 16 mm lower (the liver pushes it down)
stomach     300 mL       left upper quadrant, anterior: fundus under the left dome, body
                         down and forward, antrum crossing to the pylorus right of midline;
                         wall, fluid contents and a gas pocket in the anterior part
pancreas    70 mL        thin lobulated tube in front of the spine, aorta and SMA: head in
                         the duodenal C-loop right of midline, neck in front of the portal
                         confluence, tail rising to the splenic hilum; splenic vein behind
gallbladder 30 mL        pear-shaped, in the fossa of the liver's inferior surface, fundus
                         poking below the liver edge forwards and downwards
aorta       21 mm tube   just in front of and left of the vertebral bodies, whole scan
=========== ============ ==================================================================

Unlabelled structures (label 0): body outline with subcutaneous fat and body-wall
muscle, visceral fat, vertebral bodies with discs and posterior elements, paraspinal,
psoas and quadratus muscles, ribs 7-12, lung bases and heart above the diaphragm, IVC,
portal/splenic/superior mesenteric/renal veins, celiac/hepatic/splenic/superior
mesenteric arteries, duodenal C-loop, jejunal loops, colon with faeces and gas.

Hounsfield units (portal venous phase, PROTOCOL.md section E; each case draws every
tissue uniformly from its range, see ``tissues.TISSUE_TABLE``):

=============================== =========== ===============================================
tissue                          HU          note
=============================== =========== ===============================================
liver / intrahepatic vessels    100-130 / 150-190  vessels are part of the liver label
spleen                          110-130
kidney cortex / medulla         150-200 / 100-140
pancreas                        80-120      collapsed bowel: pancreas -30..+10, bowel wall 70-110
gallbladder bile / wall         0-20 / 40-70  fluid-filled bowel 5-30
stomach wall / contents / gas   60-90 / 0-40 / -1000
aorta (and arteries)            160-230     IVC 95-130, portal/splenic/renal veins 150-190
fat subcutaneous / visceral     -115..-90 / -105..-80
muscle / disc / bone            40-60 / 70-100 / 180-280 cancellous, 600-900 cortex, ribs 300-500
lung / air                      -900..-830 / -1000
=============================== =========== ===============================================

Variation per case: patient scale 0.92-1.08 (positions x scale, volumes x scale**3), each
organ's volume x 0.9-1.1, organ-group offsets (sd 4 mm), body offset, subcutaneous fat
10-35 mm, smooth random deformation of every organ (and lobulation of the pancreas), HU
per tissue, noise sd 10-25 HU, in-plane blur sd 0.5-0.8 mm. Every labelled organ is grown
(by thresholding its deformed shape function) to exactly its drawn volume.

Cache layout (raw BTCV): ``root/<spec.key()>/img/img0001.nii.gz``,
``label/label0001.nii.gz``, ..., ``dataset.json`` (written last, once every case exists).

Where each part lives
---------------------
* ``tissues.py``: the :class:`Tissue` ids of the painted map, each with its Synapse label and
  HU range (``TISSUE_TABLE``);
* ``anatomy.py``: the organ table and the nominal anatomy (volumes, positions, half-axes,
  the control points of every tube) at patient scale 1;
* ``spec.py``: :class:`PhantomSpec` (what to generate; ``key()`` names the cache folder),
  ``GENERATOR_VERSION`` and :func:`case_seed`;
* ``geometry.py``: the scan grid, smooth random fields, tubes along splines, ellipsoids;
* ``painting.py``: the painter that claims free voxels of the tissue map for a structure;
* ``structures.py``: one ``paint_*`` function per structure (body, spine, ribs, organs, bowel);
* ``case.py``: one case: the patient's random draws, the scan grid, every structure painted in
  order, and the CT image (:func:`synthesize_case`, :func:`generate_case`);
* ``cache.py``: the cache on disk (:func:`ensure_phantom`): NIfTI files and ``dataset.json``,
  written atomically under a lock.
"""

from __future__ import annotations

from .cache import ensure_phantom, nifti_affine
from .case import PhantomCase, generate_case, synthesize_case
from .spec import GENERATOR_VERSION, PhantomSpec, case_seed
from .tissues import TISSUE_TABLE, Tissue

__all__ = ["PhantomSpec", "PhantomCase", "Tissue", "TISSUE_TABLE", "GENERATOR_VERSION", "case_seed", "ensure_phantom",
           "generate_case", "synthesize_case", "nifti_affine"]
