package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// maxConfigBytes bounds what a config file may hold: a real one is a few
// hundred bytes, and reading must end even when pointed at /dev/zero.
const maxConfigBytes = 1 << 20

// readConfigFile reads and decodes the JSON config file at path. It refuses,
// as a usage error naming the problem, anything but exactly one JSON object
// of the known keys, each at most once: a second document, trailing
// garbage, a duplicate key (which of the two would win is a guess), an
// unknown key, or a file larger than maxConfigBytes.
func readConfigFile(path string) (fileConfig, error) {
	var fc fileConfig
	f, err := os.Open(path)
	if err != nil {
		return fc, usagef("config file: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return fc, usagef("config file %s: %v", path, err)
	}
	if len(data) > maxConfigBytes {
		return fc, usagef("config file %s: larger than %d bytes; is it the config file?", path, maxConfigBytes)
	}
	if err := duplicateKey(data); err != nil {
		return fc, usagef("config file %s: %v", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return fc, usagef("config file %s: %v", path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fc, usagef("config file %s: more than one JSON value (offset %d)", path, dec.InputOffset())
	}
	return fc, nil
}

// duplicateKey returns an error naming the first key that appears twice in
// one JSON object of data (encoding/json silently keeps the last one).
func duplicateKey(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object bool
		keys   map[string]bool
		atKey  bool // the next string token of an object is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return nil // syntax errors are reported by the real decode
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		isKey := top != nil && top.object && top.atKey
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, &frame{object: true, keys: map[string]bool{}, atKey: true})
				continue // a container as a value: the parent's next token is a key again when it closes
			case '[':
				stack = append(stack, &frame{})
				continue
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					stack[len(stack)-1].atKey = true
				}
				continue
			}
		case string:
			if isKey {
				if top.keys[t] {
					return fmt.Errorf("key %q given twice", t)
				}
				top.keys[t] = true
				top.atKey = false
				continue
			}
		}
		if top != nil && top.object {
			top.atKey = true // a scalar value ends the member
		}
	}
}
