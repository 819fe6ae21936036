package compression_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"
)

// Realistic values for the tests and the measurements: JSON of the kind
// applications cache (API responses, rendered records), made from a seed
// so that every run measures the same bytes, with enough variety (ids,
// prices, timestamps, free text from a vocabulary) that compressors do not
// have it easy; and bytes that are already compressed (an image, a gzip
// body), which look random.

var words = []string{
	"account", "active", "address", "amount", "archive", "balance", "billing", "blue", "cancelled",
	"card", "catalog", "checkout", "city", "coffee", "comment", "complete", "country", "coupon",
	"credit", "customer", "delivery", "discount", "draft", "email", "express", "fragile", "gift",
	"green", "invoice", "large", "medium", "monthly", "note", "order", "package", "paid", "pending",
	"premium", "price", "product", "refund", "region", "return", "review", "shipping", "small",
	"standard", "status", "street", "subscription", "tax", "total", "tracking", "warehouse", "yearly",
}

type item struct {
	SKU      string  `json:"sku"`
	Name     string  `json:"name"`
	Qty      int     `json:"qty"`
	Price    float64 `json:"price"`
	Discount float64 `json:"discount,omitempty"`
}

type order struct {
	ID        int64     `json:"id"`
	Customer  customer  `json:"customer"`
	Items     []item    `json:"items"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	Tags      []string  `json:"tags"`
	Note      string    `json:"note,omitempty"`
	Total     float64   `json:"total"`
}

type customer struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	Street  string `json:"street"`
	City    string `json:"city"`
	Country string `json:"country"`
}

func phrase(r *rand.Rand, n int) string {
	s := ""
	for i := range n {
		if i > 0 {
			s += " "
		}
		s += words[r.IntN(len(words))]
	}
	return s
}

func newOrder(r *rand.Rand) order {
	o := order{
		ID: r.Int64N(1e12),
		Customer: customer{
			ID: r.Int64N(1e9), Name: phrase(r, 2), Email: fmt.Sprintf("user%d@example.com", r.IntN(1e6)),
			Street: fmt.Sprintf("%d %s street", r.IntN(999)+1, words[r.IntN(len(words))]),
			City:   phrase(r, 1), Country: []string{"DE", "FR", "US", "JP", "BR"}[r.IntN(5)],
		},
		Status:    []string{"pending", "paid", "shipped", "cancelled"}[r.IntN(4)],
		CreatedAt: time.Unix(1.7e9+r.Int64N(1e8), 0).UTC(),
		Tags:      []string{words[r.IntN(len(words))], words[r.IntN(len(words))]},
	}
	if r.IntN(3) == 0 {
		o.Note = phrase(r, 5+r.IntN(15))
	}
	for range 1 + r.IntN(4) {
		it := item{SKU: fmt.Sprintf("SKU-%06d", r.IntN(1e6)), Name: phrase(r, 3), Qty: 1 + r.IntN(5), Price: float64(r.IntN(100000)) / 100}
		if r.IntN(4) == 0 {
			it.Discount = float64(r.IntN(50)) / 100
		}
		o.Total += it.Price * float64(it.Qty)
		o.Items = append(o.Items, it)
	}
	return o
}

// jsonValue returns a JSON array of orders of about size bytes (never
// more, but at least one order), different for every seed.
func jsonValue(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	out := []byte("[")
	for {
		b, err := json.Marshal(newOrder(r))
		if err != nil {
			panic(err)
		}
		if len(out) > 1 && len(out)+len(b)+2 > size {
			return append(out, ']')
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
}

// randomValue is size bytes that do not compress, as a JPEG or a gzip
// body does not.
func randomValue(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0xbad))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
