# The tutorial's upload header (自定制报头), client side. The tutorial gives
# it as a snippet with a made-up 1T file; this completes it for a real file:
#   python3 upload_client.py FILE [PORT]
import socket,json,struct
import hashlib,os,sys  # skiff: to describe a real file, and the port from argv
file_path=sys.argv[1]
PORT=int(sys.argv[2]) if len(sys.argv) > 2 else 8080
with open(file_path,'rb') as f:
    file_content=f.read()
conn=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
conn.connect(('127.0.0.1',PORT))
#为避免粘包,必须自定制报头
header={'file_size':len(file_content),'file_name':file_path,'md5':hashlib.md5(file_content).hexdigest()}
#为了该报头能传送,需要序列化并且转为bytes
head_bytes=bytes(json.dumps(header),encoding='utf-8') #序列化并转成bytes,用于传输
#为了让客户端知道报头的长度,用struck将报头长度这个数字转成固定长度:4个字节
head_len_bytes=struct.pack('i',len(head_bytes)) #这4个字节里只包含了一个数字,该数字是报头的长度
#客户端开始发送
conn.send(head_len_bytes) #先发报头的长度,4个bytes
conn.send(head_bytes) #再发报头的字节格式
conn.sendall(file_content) #然后发真实内容的字节格式
conn.close()
