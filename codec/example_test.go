package codec_test

import (
	"errors"
	"fmt"

	"github.com/dbcache/dbcache/codec"
)

func ExampleJSON() {
	type Point struct{ X, Y int }
	c := codec.JSON[Point]()
	b, _ := c.Encode("p:1", Point{1, 2})
	fmt.Println(string(b))
	p, err := c.Decode("p:1", b)
	fmt.Println(p, err)

	// Bytes that are not a Point: an error, never a made-up value.
	_, err = c.Decode("p:1", []byte(`{"X":"one"}`))
	fmt.Println(err != nil)
	// Output:
	// {"X":1,"Y":2}
	// {1 2} <nil>
	// true
}

// A codec is two methods; this one stores temperatures as text, so that
// `dbcache get` shows them as they are.
type celsius float64

type celsiusCodec struct{}

func (celsiusCodec) Encode(_ string, v celsius) ([]byte, error) {
	return fmt.Appendf(nil, "%.1f°C", float64(v)), nil
}

func (celsiusCodec) Decode(_ string, data []byte) (celsius, error) {
	var v float64
	if _, err := fmt.Sscanf(string(data), "%f°C", &v); err != nil {
		return 0, errors.New("not a temperature: " + string(data))
	}
	return celsius(v), nil
}

func ExampleCodec() {
	var c codec.Codec[celsius] = celsiusCodec{}
	b, _ := c.Encode("berlin", 21.5)
	fmt.Println(string(b))
	v, err := c.Decode("berlin", b)
	fmt.Println(v, err)
	// Output:
	// 21.5°C
	// 21.5 <nil>
}
