package main

import (
	"context"
	"errors"
	"io"
)

var errTODO = errors.New("not implemented yet")

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error { return errTODO }
