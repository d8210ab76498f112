(function(){
const R=window.DCT_REPORT, el=document.getElementById('classtable'); if(!R||!el) return;
const PAGE=100, M=R.metrics||[];
const f=(x,d)=>x==null?'–':x.toFixed(d==null?2:d);
// per registered metric (classes.js "metrics"): baseline → DCT (sorted by the DCT value) and the change Δ
const ch=(c,m)=>(c[m.key+'d']==null||c[m.key+'b']==null)?null:c[m.key+'d']-c[m.key+'b'];
const good=(c,m)=>{const u=ch(c,m);return u==null?null:(m.better==='lower'?-u:u);};
let cols=[['id','num',c=>c.id,null],['class','',c=>c.name,null],['status','',c=>c.status,null]];
for(const m of M){
 cols.push([m.label+' baseline → DCT'+(m.variants.includes('r')?' (real)':''),'num',c=>c[m.key+'d'],
  c=>f(c[m.key+'b'],m.digits)+' → '+f(c[m.key+'d'],m.digits)+(c[m.key+'r']!=null?' ('+f(c[m.key+'r'],m.digits)+')':'')]);
 cols.push([m.label+' Δ','num',c=>ch(c,m),c=>{const u=ch(c,m);return u==null?'–':(u>0?'+':'')+u.toFixed(m.digits);},
  c=>{const g=good(c,m);return g>0?'up':g<0?'down':'';}]);
}
cols.push(['epochs','num',c=>c.ep,null]);
let rows=R.classes.slice(), sortI=0, dir=1, page=0;
const q=document.getElementById('classsearch'), info=document.getElementById('classinfo');
function render(){
 const t=(q.value||'').trim().toLowerCase();
 let sel=t?rows.filter(c=>String(c.id)===t||c.name.toLowerCase().includes(t)||c.status.includes(t)):rows;
 const key=cols[sortI][2];
 sel=sel.slice().sort((a,b)=>{const x=key(a),y=key(b);if(x==null&&y==null)return a.id-b.id;if(x==null)return 1;
  if(y==null)return -1;return (x<y?-1:x>y?1:a.id-b.id)*dir;});
 const pages=Math.max(1,Math.ceil(sel.length/PAGE)); page=Math.min(page,pages-1);
 const tb=document.createElement('tbody');
 for(const c of sel.slice(page*PAGE,page*PAGE+PAGE)){
  const tr=document.createElement('tr');
  const cell=(txt,cls)=>{const td=document.createElement('td');td.textContent=txt;
   if(cls)td.className=cls;tr.appendChild(td);return td;};
  const a=document.createElement('a'); a.href='class.html#c'+c.id; a.textContent=c.id;
  const td0=cell('', 'num'); td0.appendChild(a);
  cell(c.name); cell(c.status+(c.earlier?' (earlier run)':''), (c.status==='failed'||c.status==='no record')?'bad':'');
  for(const col of cols.slice(3,-1)){cell(col[3](c),col[1]+(col[4]?' '+col[4](c):''));}
  cell(c.ep==null?'–':c.ep,'num'); tb.appendChild(tr);}
 const old=el.querySelector('tbody'); old?el.replaceChild(tb,old):el.appendChild(tb);
 info.textContent=sel.length+' of '+rows.length+' classes · page '+(page+1)+' of '+pages;
}
const head=document.createElement('thead'), hr=document.createElement('tr');
cols.forEach((c,i)=>{const th=document.createElement('th');th.textContent=c[0];th.style.cursor='pointer';
 th.title='sort';th.onclick=()=>{dir=(sortI===i)?-dir:1;sortI=i;render();};hr.appendChild(th);});
head.appendChild(hr); el.appendChild(head);
q.oninput=()=>{page=0;render();};
const pre=/^#q=(.*)$/.exec(location.hash);  // index.html#q=text: a shareable search
if(pre){q.value=decodeURIComponent(pre[1]);q.scrollIntoView();}
document.getElementById('classprev').onclick=()=>{page=Math.max(0,page-1);render();};
document.getElementById('classnext').onclick=()=>{page=page+1;render();};
render();
})();
