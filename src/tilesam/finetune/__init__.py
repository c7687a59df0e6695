"""Finetuning: turn a vanilla SAM model into one finetuned on annotated 2D microscopy.

``finetune(base, images, labels, out)`` (:mod:`.trainer`) trains a registered model (or a
checkpoint file) on images with instance labels and writes ``out`` as a plain SAM state dict, so
the result loads with ``load_model(out)`` anywhere; a model card JSON beside it records where it
came from, and ``register_finetuned`` (:mod:`.card`) makes its name (``<base>-ft-<dataset>``
unless given) resolve in the registry of a process. The settings are
:class:`tilesam.config.FinetuneConfig`.

Where each part lives (this package imports nothing itself, so importing one part loads only
what that part needs):

- :mod:`.data`: annotated images, paired by name, split, read once (``ImageSet``).
- :mod:`.views`: the views of an image that training draws, in the model's input frame.
- :mod:`.cache`: view embeddings of a frozen encoder, in memory and on disk.
- :mod:`.loss`: training prompts, iterative corrections and the loss of a view.
- :mod:`.validate`: single-prompt scores of the validation images (model selection).
- :mod:`.records`: what a run records (epochs, the state between them, the result).
- :mod:`.instance_decoder`: the instance decoder a run starts from.
- :mod:`.loop`: the optimizer, schedule, epochs of steps and decoder-only updates.
- :mod:`.checkpoint`: the resumable state file, the run's fingerprint, saving weights.
- :mod:`.trainer`: ``finetune()``, a whole run from base model and data to a registered model.
- :mod:`.card`: the model card, loss log and plot, and registering a finetuned model.

How training works, and why (micro-sam's recipe, sized for a CPU):

- The schema's defaults train the SAM parts and the instance decoder (so a model named
  ``<base>-ft-<dataset>`` with no settings gets AIS) in a budget for 2 CPU cores, about 30 minutes
  for about 30 DSB2018-sized images; a setting whose default is ``auto`` (``decoder_crop``) takes its
  schema value for the device the run is on (``FinetuneConfig.for_device``), and the card records it.
- A *view* is one training image, or a crop of it (``crop_size``), under one of the 8 dihedral
  transforms (flips and 90-degree rotations). Everything for a view happens in the model's input
  frame: the image resized as SamPredictor resizes it, the labels resized with nearest neighbours,
  prompts in frame pixels, and the loss on the mask logits upsampled to that frame.
- Each step takes ``images_per_batch`` views and up to ``objects_per_image`` ground-truth objects
  of each. Each view is prompted either with the objects' boxes or with 1..``max_points`` random
  positive points (a single point asks for three masks, and the best one counts, as SAM trains).
- Iterative prompting: ``sub_iterations`` decoder passes per step; after each pass every object gets
  one positive click in its missed region and one negative click in its excess region (placed as
  the evaluation in :mod:`tilesam.interactive.prompts` places them), and the pass's logits are fed back as
  ``mask_input``. The loss is averaged over the passes: Dice on the masks plus the MSE between the
  predicted IoU and the IoU the mask really has.
- AdamW on the trained parts only (``train_parts``: any of mask_decoder, prompt_encoder,
  image_encoder), linear warmup then cosine decay, gradient clipping. The prompt encoder may get a
  larger rate (``prompt_encoder_lr_factor``): its point embeddings are single vectors, which Adam
  moves by about ``lr`` per step, too slowly to teach a box-only model (LiteMedSAM) points. The model stays in eval mode:
  SAM has no dropout, and TinyViT's batch norms would be ruined by batches of one image.
- With a frozen image encoder (the default) each view is embedded once and the embedding reused
  (in memory, optionally on disk): that is what makes finetuning feasible on a CPU. Augmentation
  then has to happen before embedding, so each image gets a fixed pool of ``augment_variants``
  dihedral variants (the identity plus randomly chosen others), embedded lazily when first drawn:
  each variant costs one encoder pass, so the pool is a budget, 8 being the whole group.
- One epoch is one pass over the training images (or ``iterations_per_epoch`` steps). After each
  epoch the validation images are scored with single-box and single-point prompts (mean IoU and
  Dice per object); the epoch with the best mean of box and point IoU is the one written out. The
  base model is scored as epoch 0, so finetuning never returns a worse model than it started from
  on the validation set.
- Resumable and deterministic: every epoch draws from a generator seeded with (seed, epoch), and
  the model, optimizer, scheduler, best weights and history go to ``<out>.state.pt`` after each
  epoch, so a rerun continues where an interrupted one stopped and ends with the same weights as
  an uninterrupted run. A state file from different settings is an error, not silently mixed in.
- On a GPU the forward passes run under autocast (bfloat16 where supported, else float16 with a
  gradient scaler); GPU kernels are not bitwise deterministic, CPU runs are for the same thread
  count and CPU kind (float sums depend on both; the card's ``arithmetic`` records them).
"""
