import os

if __name__ == "__main__":  # not when a spawned child process imports this module as __mp_main__
    if int(os.environ.get("RANK", "0")) > 0:  # a torchrun rank other than 0: rank 0's progress bars are the run's
        os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when it is imported

    from compress.cli import main

    main()
